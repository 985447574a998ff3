"""Connecting the gateway to Ray: an embedded local Ray on 127.0.0.1, or a cluster by address."""

from __future__ import annotations

import logging
import os

import ray

from actors.session.names import NAMESPACE
from actors.settings import Settings

log = logging.getLogger(__name__)
# Each activation leaves, once its actor has passivated, a dead actor's and a dead worker's record
# and its calls' task events in the GCS: ~50-90 kB in all (benchmarks/churn_memory.py), kept by
# default up to 100,000 actors and tasks. Capped, the GCS stops growing once the caps are reached
# (measured with lowered caps: +2 to +17 MB per 1,000 activations after ~300); these still show the
# latest passivations in `ray list actors` and the latest calls in `ray list tasks`.
GCS_CAPS = {
    "RAY_maximum_gcs_destroyed_actor_cached_count": "1000",
    "RAY_maximum_gcs_dead_worker_cached_count": "1000",
    "RAY_task_events_max_num_task_in_gcs": "10000",
}


def connect(settings: Settings, *, include_dashboard: bool | None = None) -> bool:
    """Connect to Ray; True when this process started (and so must stop) its own Ray."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": settings.worker_env()}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, runtime_env=runtime_env,
                 logging_level=logging.WARNING)
        return False
    # Read by the GCS and raylet this process starts (inherited environment). A laptop's Ray
    # starts no worker ahead of use (each idle one costs ~45 MB and ~9 millicores).
    for name, value in GCS_CAPS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    if include_dashboard is None:  # its nine module processes: ~200 MB, ~15 millicores
        include_dashboard = os.environ.get("LLMCAM_RAY_DASHBOARD", "") == "1"
    for attempt in (1, 2):
        try:
            # A fresh local Ray even where another one runs here, on loopback (see gateway.cli).
            ray.init(address="local", _node_ip_address="127.0.0.1", namespace=NAMESPACE,
                     runtime_env=runtime_env, include_dashboard=include_dashboard,
                     dashboard_host="127.0.0.1", logging_level=logging.WARNING)
            return True
        except Exception as exc:  # a start that timed out under load: once more, from scratch
            ray.shutdown()  # what was half started
            if attempt == 2:
                raise
            log.warning("the embedded Ray did not start (%s: %s); trying once more",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    return True
