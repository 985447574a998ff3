"""Deploying the detector (the registry does it, once per cluster) and calling it (from
sessions): the half of the detector that runs outside its replica.

Session actors import this module for `detect()`; it imports Ray Serve's client side only, and
the replica's module (replica.py, no torch at its top) only to deploy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from actors.detector import draw, replica
from actors.detector.replica import BATCH_WAIT_S, CONCURRENT_BATCHES, DEPLOYMENT, IMGSZ, MAX_BATCH
from actors.errors import cause_of
from actors.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "llmcam-detector"
READY_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 120.0


class DetectorUnavailable(RuntimeError):
    """The detector deployment is not running (yet)."""


# Deploying -------------------------------------------------------------------------------------

def detector_gpus(settings: Settings) -> float:
    """GPUs per replica: the setting, else one where the cluster has GPUs, else none."""
    if settings.detector_gpus is not None:
        return float(settings.detector_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _fingerprint(settings: Settings, gpus: float, options: dict[str, Any]) -> str:
    """What makes one deployment of the detector differ from another: this code, the model,
    the device and the options."""
    digest = hashlib.sha256()
    for module in (__file__, replica.__file__, draw.__file__):
        digest.update(Path(module).read_bytes())
    digest.update(json.dumps([settings.yolo_model, gpus, settings.detector_replicas, IMGSZ,
                              options, settings.worker_env()], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _running_fingerprint() -> str | None:
    try:
        running = _ready_handle()
        if running is None:
            return None
        return running.stats.remote().result(timeout_s=30)["fingerprint"]
    except Exception:  # not running, failed, or an older version without a fingerprint
        return None


def deploy(settings: Settings, *, max_batch_size: int = MAX_BATCH,
           batch_wait_timeout_s: float = BATCH_WAIT_S) -> None:
    """Run the detector application (blocking until it is up). The gateway calls this in a
    background thread at start-up. A detector that already runs with the same code and
    settings is left alone: a second gateway (or a restarted one) does not restart it."""
    gpus = detector_gpus(settings)
    options = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
    fingerprint = _fingerprint(settings, gpus, options)
    if _running_fingerprint() == fingerprint:
        log.info("detector already running with these settings")
        return
    # Replicas ask for no CPU: Ray would otherwise hold a core per replica that the media
    # tasks (captures, plots) need on a small machine, and on a GPU node the replica's CPU
    # work (request handling, JPEG headers) is small. The CPU fallback path then shares the
    # cores with everything else, which is what a CPU-only laptop wants anyway.
    serve.start(proxy_location="Disabled")  # sessions call the handle: no HTTP proxy
    app = replica.Detector.options(
        num_replicas=settings.detector_replicas,
        # a model that cannot load (weights missing offline) fails the same way every time:
        # one try per replica, then DEPLOY_FAILED with the reason, not a replica after another
        max_constructor_retry_count=max(1, settings.detector_replicas),
        max_ongoing_requests=CONCURRENT_BATCHES * max_batch_size,
        user_config=options,
        ray_actor_options={"num_cpus": 0, "num_gpus": gpus,
                           "runtime_env": {"env_vars": settings.worker_env()}},
    ).bind(settings.yolo_model, IMGSZ, None, fingerprint)
    try:
        serve.run(app, name=APP_NAME, route_prefix=None,  # no HTTP route: handles only
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
    except RuntimeError as exc:  # Serve says "failed"; the deployment's status says why
        status = serve.status().applications.get(APP_NAME)
        raise DetectorUnavailable("the object detector failed to start: "
                                  + (_failure(status) if status else str(exc))) from None
    log.info("detector %s running (%s GPU per replica, %d replicas)", settings.yolo_model,
             gpus, settings.detector_replicas)


class Deployment:
    """The gateway's start-up deploy: the registry runs it (one deploy per cluster, shared
    with first-use deploys, see `ensure`); the gateway only awaits its outcome to log it once.

    A cluster's gateway deploys at start (GPU replicas ready before the first user); an
    embedded server does not: its first detection deploys (see `handle`), so a laptop that
    never detects keeps no Serve controller, no replica and no torch in memory."""

    def __init__(self, settings: Settings, registry: Any) -> None:
        self._settings = settings
        self._registry = registry
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._report())

    async def _report(self) -> None:
        try:
            failed = await self._registry.ensure_detector.remote(self._settings, True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the registry is gone: the next detection deploys
            failed = _reason(exc)
        if failed:  # reported once; `detect_objects` answers with the reason
            log.error("the object detector could not start (not retried; detect_objects "
                      "answers with the reason): %s", failed)

    async def stop(self) -> None:
        """Stop waiting (call before ray.shutdown; the deploy itself belongs to the cluster)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch


def _failure(app: Any) -> str:
    """Why a failed application failed, in one line: the replica's error (in its deployment's
    message, after Serve's preamble and traceback) rather than the application's summary."""
    texts = [getattr(d, "message", "") or "" for d in app.deployments.values()]
    text = " ".join(" ".join([*texts, app.message or ""]).split())
    return _model_error(text) or (app.message or text)[:400]


def _reason(exc: BaseException) -> str:
    """The line of a failed deploy that says why (a replica's error, not Serve's traceback)."""
    text = " ".join(str(cause_of(exc)).split())
    return _model_error(text) or text[:400] or type(exc).__name__


def _model_error(text: str) -> str:
    """The replica's "cannot load YOLO model ..." sentence in `text`, or ''. The last one: the
    earlier ones are the source line in a traceback."""
    found = text.rfind("cannot load YOLO model")
    if found < 0:
        return ""
    end = text.find("LLMCAM_YOLO_MODEL", found)
    return text[found:end + len("LLMCAM_YOLO_MODEL") if end >= 0 else found + 400][:400]


# Calling it (from sessions) --------------------------------------------------------------------

_handle: Any = None  # one handle per process: it routes for every session in it


def _ready_handle() -> Any:
    """The deployment's handle when the application is running, None while it starts, and
    ABSENT when nothing deployed it yet (raises when its deployment failed)."""
    from ray.serve.exceptions import RayServeException

    try:
        status = serve.status()
    except RayServeException:  # Serve itself is not started yet
        return ABSENT
    app = status.applications.get(APP_NAME)
    if app is None:
        return ABSENT
    if app.status == "DEPLOY_FAILED":
        raise DetectorUnavailable(f"the object detector failed to start: {_failure(app)}")
    if app.status != "RUNNING":
        return None
    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)


ABSENT = object()


async def handle(settings: Settings | None = None, timeout: float = READY_TIMEOUT_S) -> Any:
    """The detector's handle, waiting (bounded) for a deployment that is still starting; where
    none was deployed (an embedded server deploys on first use), asks the registry to deploy
    it with `settings`."""
    global _handle
    if _handle is not None:
        return _handle
    deadline = time.monotonic() + timeout
    asked = False
    while True:
        found = await asyncio.to_thread(_ready_handle)
        if found is ABSENT:
            if settings is not None and not asked:
                asked = True
                await ensure(settings)
        elif found is not None:
            _handle = found
            return found
        if time.monotonic() >= deadline:
            raise DetectorUnavailable(
                f"the object detector is not running (waited {timeout:.0f} s); check the "
                "gateway's log")
        await asyncio.sleep(0.5)


async def ensure(settings: Settings) -> None:
    """Have the cluster's registry deploy the detector (once, whoever asks first)."""
    from actors.session.registry import registry_handle

    registry = await asyncio.to_thread(registry_handle)
    if registry is None:
        raise DetectorUnavailable("the object detector is not running (no gateway started "
                                  "this cluster's registry)")
    failed = await registry.ensure_detector.remote(settings)
    if failed:
        raise DetectorUnavailable(f"the object detector failed to start: {failed}")


async def detect(image: bytes, conf: float = 0.25,
                 settings: Settings | None = None) -> dict[str, Any]:
    """Detect objects in one JPEG through the deployment (batched with other sessions');
    with `settings`, deployed on first use where nobody deployed it yet."""
    response = (await handle(settings)).detect.remote(image, conf)

    async def result() -> dict[str, Any]:
        return await response

    try:
        return await asyncio.wait_for(result(), CALL_TIMEOUT_S)
    except TimeoutError:
        response.cancel()
        raise TimeoutError(f"the object detector did not answer within {CALL_TIMEOUT_S:.0f} s")\
            from None
    except ray.exceptions.RayTaskError as exc:
        cause = cause_of(exc)
        if cause is exc:
            raise
        raise cause from None
