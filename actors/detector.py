"""YOLO object detection as a Ray Serve deployment, and what sessions use to call it.

Every replica asks Ray for `detector_gpus` GPUs (0 on a CPU-only cluster: same code), loads the
model once, and batches the requests of all sessions with `@serve.batch`: one decode, one
letterbox, one forward pass and one NMS per batch, on the device Ray assigned. Sessions send
JPEG bytes (nodes share no disks) and get back counts per class and an annotated JPEG.

Session actors import this module for `detect()`: torch, ultralytics and OpenCV are imported
inside the replica (in `Detector.__init__` and its methods), never here at the top.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray import serve

from actors._ray import release_memory
from actors.errors import cause_of
from actors.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "llmcam-detector"
DEPLOYMENT = "Detector"
MAX_BATCH = 32
BATCH_WAIT_S = 0.01
CONCURRENT_BATCHES = 2
IMGSZ = 640
IOU = 0.7  # ultralytics' predict default
MAX_DET = 300
MAX_DRAWN = 100  # boxes drawn per image (all are counted)
MAX_PIXELS = 50_000_000
READY_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 120.0
PALETTE = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86",
           "1A9334", "00D4BB", "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF",
           "520085", "CB38FF", "FF95C8", "FF37C7")  # ultralytics' colours


class DetectionError(ValueError):
    """One image of a batch could not be used (not an image, too large); the others go on."""


class DetectorUnavailable(RuntimeError):
    """The detector deployment is not running (yet)."""


# Deployment -------------------------------------------------------------------------------------

@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=CONCURRENT_BATCHES * MAX_BATCH,
                  health_check_period_s=10, graceful_shutdown_timeout_s=5)
class Detector:
    """One replica: the model on its device, and a batcher in front of it."""

    def __init__(self, model: str, imgsz: int = IMGSZ, cpu_threads: int | None = None,
                 fingerprint: str = "") -> None:
        _keep_replica_port_on_node_address()
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "False")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        import torch
        from ultralytics import YOLO
        from ultralytics import settings as yolo_settings

        yolo_settings.update({"sync": False})
        self._torch = torch
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self._device = torch.device("cuda" if gpu_ids else "cpu")
        self._dtype = torch.float16 if self._device.type == "cuda" else torch.float32
        if self._device.type == "cpu":
            torch.set_num_threads(max(1, cpu_threads or (os.cpu_count() or 1)))
        try:
            yolo = YOLO(model)
        except Exception as exc:  # weights missing offline, bad name: say so, do not hang
            raise RuntimeError(f"cannot load YOLO model {model!r}: {exc}. Put the weights "
                               "on every node or set LLMCAM_YOLO_MODEL") from None
        net = yolo.model
        if hasattr(net, "fuse"):
            try:
                net = net.fuse(verbose=False)
            except TypeError:
                net = net.fuse()
        self._net = net.to(self._device).eval()
        if self._dtype == torch.float16:
            self._net = self._net.half()
        for parameter in self._net.parameters():
            parameter.requires_grad_(False)
        self._names: dict[int, str] = {int(k): str(v) for k, v in yolo.names.items()}
        self._end2end = bool(getattr(self._net.model[-1], "end2end", False)) \
            if hasattr(self._net, "model") else False
        self._model_name = model
        self._stride = max(32, int(getattr(self._net, "stride", torch.tensor([32])).max()))
        self._fingerprint = fingerprint
        self._imgsz = imgsz
        self._palette = torch.tensor([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in PALETTE],
                                     dtype=torch.uint8, device=self._device)
        self._labels = _LabelSprites(self._names, self._palette, self._device)
        # the CPU path runs one batch at a time (two would only split the same cores)
        self._cpu_lock = threading.Lock() if self._device.type == "cpu" \
            else contextlib.nullcontext()
        self._batch_sizes: Counter[int] = Counter()
        self._busy_s = 0.0
        with torch.inference_mode():  # the first pass allocates; do it before traffic
            self._net(torch.zeros(1, 3, imgsz, imgsz, dtype=self._dtype, device=self._device))

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch tuning through `user_config`, without restarting the replica."""
        self._detect_batch.set_max_batch_size(int(config.get("max_batch_size", MAX_BATCH)))
        self._detect_batch.set_batch_wait_timeout_s(
            float(config.get("batch_wait_timeout_s", BATCH_WAIT_S)))

    async def detect(self, image: bytes, conf: float = 0.25) -> dict[str, Any]:
        """Counts per class, boxes, and the annotated image (JPEG) of one image (JPEG bytes)."""
        result = await self._detect_batch(image, float(conf))
        if isinstance(result, Exception):
            raise result
        return result

    # Two batches may be in flight: on a GPU one batch's host work (decode calls, drawing,
    # results) overlaps the other's kernels; on the CPU `_run` takes a lock, one at a time.
    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S,
                 max_concurrent_batches=CONCURRENT_BATCHES)
    async def _detect_batch(self, images: list[bytes],
                            confs: list[float]) -> list[dict[str, Any] | Exception]:
        self._batch_sizes[len(images)] += 1
        # off the event loop, so the next batch fills while this one runs
        return await asyncio.to_thread(self._run, images, confs)

    def stats(self) -> dict[str, Any]:
        """What this replica has done: the batch sizes it formed, and where it runs."""
        return {"device": str(self._device), "model": self._model_name,
                "fingerprint": self._fingerprint,
                "batch_sizes": dict(sorted(self._batch_sizes.items())),
                "batches": sum(self._batch_sizes.values()),
                "images": sum(n * c for n, c in self._batch_sizes.items()),
                "busy_s": round(self._busy_s, 3), "pid": os.getpid(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else [],
                "max_batch_size": self._detect_batch._get_max_batch_size()}

    def reset_stats(self) -> None:
        self._batch_sizes.clear()
        self._busy_s = 0.0

    # the batch, in a worker thread ----------------------------------------------------------
    def _run(self, images: list[bytes], confs: list[float]) -> list[dict[str, Any] | Exception]:
        torch = self._torch
        with self._cpu_lock, torch.inference_mode():
            started = time.perf_counter()
            try:
                return self._run_batch(images, confs)
            finally:
                # Batches of changing sizes leave glibc's arenas holding freed tensors: measured
                # here, 120 batches of 1-6 images of 12 sizes grew the replica's USS by 470 MB
                # without this and by 19 MB with it (a 30-minute soak: +425 MB, +266 MB/h).
                release_memory(collect=False)
                self._busy_s += time.perf_counter() - started

    def _run_batch(self, images: list[bytes],
                   confs: list[float]) -> list[dict[str, Any] | Exception]:
        """Decode, letterbox, one forward pass, NMS, draw, encode: the whole batch at once."""
        torch = self._torch
        decoded = self._decode(images)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        results: list[dict[str, Any] | Exception] = list(decoded)  # errors stay in place
        if not good:
            return results
        frames = [decoded[i] for i in good]
        batch, scale = self._letterbox(frames)
        out = self._net(batch)
        preds = out[0] if isinstance(out, (list, tuple)) else out
        conf = torch.tensor([max(0.001, confs[i]) for i in good], device=self._device)
        found = self._postprocess(preds, conf, scale)
        drawn = [self._draw(frame, boxes, classes)
                 for frame, (boxes, _, classes) in zip(frames, found, strict=True)]
        jpegs = self._encode(drawn)
        for i, frame, (boxes, scores, classes), jpeg in zip(good, frames, found, jpegs,
                                                              strict=True):
            results[i] = self._result(frame, boxes, scores, classes, jpeg)
        return results

    def _decode(self, images: list[bytes]) -> list[Any]:
        """Decode on the device (nvJPEG on a GPU, batched); bad items become errors."""
        torch = self._torch
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        out: list[Any] = [None] * len(images)
        jpegs: list[int] = []
        for i, data in enumerate(images):
            try:
                kind, width, height = _image_header(data)
                if width * height > MAX_PIXELS:
                    raise DetectionError(f"the image is {width}x{height} pixels; at most "
                                         f"{MAX_PIXELS // 1_000_000} megapixels are accepted")
                buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                if kind == "JPEG":
                    out[i] = buffer
                    jpegs.append(i)
                else:  # other formats: decoded on the CPU, then moved
                    out[i] = decode_image(buffer, mode=ImageReadMode.RGB).to(self._device)
            except DetectionError as exc:
                out[i] = exc
            except Exception:
                out[i] = DetectionError("the data is not an image that can be decoded")
        if jpegs:
            try:
                frames = decode_jpeg([out[i] for i in jpegs], mode=ImageReadMode.RGB,
                                     device=self._device)
                for i, frame in zip(jpegs, frames, strict=True):
                    out[i] = frame
            except Exception:  # one bad JPEG fails a batched decode: decode one by one
                for i in jpegs:
                    try:
                        out[i] = decode_jpeg(out[i], mode=ImageReadMode.RGB,
                                             device=self._device)
                    except Exception:
                        out[i] = DetectionError("the JPEG data is corrupt or truncated")
        return out

    def _letterbox(self, frames: list[Any]) -> tuple[Any, Any]:
        """Frames of any sizes -> one batch: each resized to fit `imgsz`, centred on grey in the
        smallest stride-aligned rectangle that holds them all (as ultralytics' rect LetterBox:
        384x640 for 16:9 frames, not 640x640). Frames of one size are resized together."""
        torch = self._torch
        import torch.nn.functional as functional

        size, stride = self._imgsz, self._stride
        fitted = []
        for frame in frames:
            height, width = int(frame.shape[1]), int(frame.shape[2])
            ratio = min(size / height, size / width)
            fitted.append((height, width, ratio, max(1, round(height * ratio)),
                           max(1, round(width * ratio))))
        batch_h = -(-max(f[3] for f in fitted) // stride) * stride
        batch_w = -(-max(f[4] for f in fitted) // stride) * stride
        batch = torch.full((len(frames), 3, batch_h, batch_w), 114 / 255, dtype=self._dtype,
                           device=self._device)
        scale = torch.zeros((len(frames), 3), dtype=torch.float32, device=self._device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (height, width, *_rest) in enumerate(fitted):
            groups.setdefault((height, width), []).append(i)
        for members in groups.values():
            height, width, ratio, new_h, new_w = fitted[members[0]]
            top, left = (batch_h - new_h) // 2, (batch_w - new_w) // 2
            x = torch.stack([frames[i] for i in members]).to(self._dtype).div_(255)
            if (new_h, new_w) != (height, width):
                x = functional.interpolate(x, size=(new_h, new_w), mode="bilinear",
                                           align_corners=False)
            index = torch.tensor(members, device=self._device)
            batch[index, :, top:top + new_h, left:left + new_w] = x
            scale[index] = torch.tensor([ratio, left, top], device=self._device)
        return batch, scale

    def _postprocess(self, preds: Any, conf: Any, scale: Any) -> list[tuple[Any, Any, Any]]:
        """Boxes in each frame's own pixels: confidence filter, then one NMS for the whole
        batch (torchvision's batched_nms, offsets by image and class; no time limit)."""
        torch = self._torch
        from torchvision.ops import batched_nms

        count = preds.shape[0]
        if self._end2end:  # (B, max_det, 6): x1 y1 x2 y2 score class, NMS-free heads
            scores, classes = preds[..., 4].float(), preds[..., 5].long()
            image, anchor = (scores > conf[:, None]).nonzero(as_tuple=True)
            boxes = preds[image, anchor, :4].float()
            scores, classes = scores[image, anchor], classes[image, anchor]
        else:  # (B, 4 + classes, anchors): cx cy w h, then class scores
            classes_n = preds.shape[1] - 4
            p = preds.transpose(1, 2)
            best, best_class = p[..., 4:].max(-1)
            image, anchor = (best > conf[:, None]).nonzero(as_tuple=True)
            xywh = p[image, anchor, :4].float()
            boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            scores, classes = best[image, anchor].float(), best_class[image, anchor]
            if boxes.numel():
                keep = batched_nms(boxes, scores, image * classes_n + classes, IOU)
                image, boxes, scores, classes = image[keep], boxes[keep], scores[keep], \
                    classes[keep]
        ratio, left, top = scale[image, 0:1], scale[image, 1:2], scale[image, 2:3]
        boxes = (boxes - torch.cat([left, top, left, top], 1)) / ratio
        # grouped by image, best first within each: two sorts and one sync, not one per image
        order = scores.argsort(descending=True)
        order = order[image[order].argsort(stable=True)]
        counts = torch.bincount(image, minlength=count).tolist()
        found = []
        for mine in order.split(counts):
            mine = mine[:MAX_DET]
            found.append((boxes[mine], scores[mine], classes[mine]))
        return found

    def _draw(self, frame: Any, boxes: Any, classes: Any) -> Any:
        """Box outlines and class labels, drawn with tensor indexing on the frame's device."""
        torch = self._torch
        if not len(boxes):
            return frame
        height, width = int(frame.shape[1]), int(frame.shape[2])
        boxes, classes = boxes[:MAX_DRAWN].flip(0), classes[:MAX_DRAWN].flip(0)  # best on top
        limit = torch.tensor([width - 1, height - 1, width - 1, height - 1], device=boxes.device)
        xyxy = boxes.round().long().clamp(min=0).minimum(limit)
        x1, y1, x2, y2 = xyxy.unbind(1)
        colors = self._palette[classes % len(self._palette)]
        thick = max(2, round(min(height, width) / 360))
        span = int((xyxy[:, 2:] - xyxy[:, :2]).max()) + 1
        step = torch.arange(span, device=boxes.device)
        band = torch.arange(thick, device=boxes.device)
        along_x = x1[:, None] + step  # (K, span)
        along_y = y1[:, None] + step
        ok_x = (step <= (x2 - x1)[:, None])[:, None, :]
        ok_y = (step <= (y2 - y1)[:, None])[:, None, :]
        rows = torch.cat([y1[:, None] + band, y2[:, None] - band], 1)[:, :, None]  # (K, 2t, 1)
        cols = torch.cat([x1[:, None] + band, x2[:, None] - band], 1)[:, :, None]
        shape = (len(xyxy), 2 * thick, span)
        ys = torch.cat([rows.expand(shape)[ok_x.expand(shape)],
                        along_y[:, None, :].expand(shape)[ok_y.expand(shape)]])
        xs = torch.cat([along_x[:, None, :].expand(shape)[ok_x.expand(shape)],
                        cols.expand(shape)[ok_y.expand(shape)]])
        which = torch.arange(len(xyxy), device=boxes.device)[:, None, None].expand(shape)
        owner = torch.cat([which[ok_x.expand(shape)], which[ok_y.expand(shape)]])
        keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        frame[:, ys[keep], xs[keep]] = colors[owner[keep]].T
        self._labels.paste(frame, x1, y1, classes, colors)
        return frame

    def _encode(self, frames: list[Any]) -> list[bytes]:
        from torchvision.io import encode_jpeg

        try:
            encoded = encode_jpeg(frames, quality=85)  # nvJPEG on a GPU, batched
        except Exception:  # some builds encode on the CPU only
            encoded = encode_jpeg([f.cpu() for f in frames], quality=85)
        return [e.cpu().numpy().tobytes() for e in encoded]

    def _result(self, frame: Any, boxes: Any, scores: Any, classes: Any,
                jpeg: bytes) -> dict[str, Any]:
        names = [self._names.get(int(c), str(int(c))) for c in classes.tolist()]
        detections = [{"class": name, "confidence": round(score, 3),
                       "box": [round(v, 1) for v in box]}
                      for name, score, box in zip(names, scores.tolist(), boxes.tolist(),
                                                  strict=True)]
        return {"counts": dict(Counter(names).most_common()), "detections": detections,
                "width": int(frame.shape[2]), "height": int(frame.shape[1]), "image": jpeg}


class _LabelSprites:
    """Each class's label (its name, white on the class colour) rendered once with OpenCV,
    kept as pixel offsets, so labels are pasted with one indexing op per image."""

    def __init__(self, names: dict[int, str], palette: Any, device: Any) -> None:
        import cv2
        import numpy as np
        import torch

        sprites = []
        for index in range(max(names) + 1 if names else 0):
            text = names.get(index, str(index))
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            mask = np.zeros((th + base + 4, tw + 4), np.uint8)
            cv2.putText(mask, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1,
                        cv2.LINE_AA)
            sprites.append(mask)
        size = max((m.size for m in sprites), default=1)
        count = len(sprites)
        self.dy = torch.zeros((count, size), dtype=torch.long)
        self.dx = torch.zeros((count, size), dtype=torch.long)
        self.text = torch.zeros((count, size), dtype=torch.bool)
        self.valid = torch.zeros((count, size), dtype=torch.bool)
        self.height = torch.zeros(count, dtype=torch.long)
        for index, mask in enumerate(sprites):
            ys, xs = np.indices(mask.shape)
            n = mask.size
            self.dy[index, :n] = torch.from_numpy(ys.ravel())
            self.dx[index, :n] = torch.from_numpy(xs.ravel())
            self.text[index, :n] = torch.from_numpy(mask.ravel() > 127)
            self.valid[index, :n] = True
            self.height[index] = mask.shape[0]
        for name in ("dy", "dx", "text", "valid", "height"):
            setattr(self, name, getattr(self, name).to(device))

    def paste(self, frame: Any, x1: Any, y1: Any, classes: Any, colors: Any) -> None:
        import torch

        if not len(classes) or not self.valid.shape[0]:
            return
        height, width = int(frame.shape[1]), int(frame.shape[2])
        classes = classes.clamp(0, self.valid.shape[0] - 1)
        top = y1 - self.height[classes]
        top = torch.where(top < 0, y1, top)  # no room above the box: inside it
        ys = top[:, None] + self.dy[classes]
        xs = x1[:, None] + self.dx[classes]
        keep = self.valid[classes] & (ys < height) & (xs < width)
        white = torch.full_like(colors, 255)
        pixel = torch.where(self.text[classes][..., None], white[:, None, :],
                            colors[:, None, :])
        frame[:, ys[keep], xs[keep]] = pixel[keep].T


def _image_header(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone (PIL reads no pixels here)."""
    import io

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the caller checks the size, with a clearer message
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG", "WEBP", "GIF"]) as image:
            return image.format or "", image.size[0], image.size[1]
    except Exception:
        raise DetectionError("the data is not an image") from None


# Deploying -------------------------------------------------------------------------------------

def detector_gpus(settings: Settings) -> float:
    """GPUs per replica: the setting, else one where the cluster has GPUs, else none."""
    if settings.detector_gpus is not None:
        return float(settings.detector_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _fingerprint(settings: Settings, gpus: float, options: dict[str, Any]) -> str:
    """What makes one deployment of the detector differ from another: this code, the model,
    the device and the options."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
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
    app = Detector.options(
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


def _keep_replica_port_on_node_address() -> None:
    """Ray Serve 2.60 starts, in every replica once its constructor has run, an unauthenticated
    gRPC server for inter-deployment calls that unpickles what it is sent, and binds it to
    every interface (`[::]:0`, no setting for the host: ray-project/ray#64544 asks for a port
    range only). On a laptop that is remote code execution for anyone on the same network.
    Our handles do not use that transport (`RAY_SERVE_USE_GRPC_BY_DEFAULT` is off), so the
    replica binds it to its node's Ray address instead, the address every other Ray server of
    the node listens on (loopback for the embedded Ray). tests/test_cli.py checks that no
    process of an embedded server listens beyond loopback after a detection."""
    if not ray.is_initialized():
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "llmcam_node_address", False):
        return
    node_ip = ray.util.get_node_ip_address()
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def on_node_address(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return bind(server, address)

    on_node_address.llmcam_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_node_address


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
