"""Connecting the gateway to Ray: an embedded local Ray on 127.0.0.1, or a cluster by address."""

from __future__ import annotations

import logging

import ray

from actors.names import NAMESPACE
from actors.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings, *, include_dashboard: bool | None = None) -> bool:
    """Connect to Ray; True when this process started (and so must stop) its own Ray."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": settings.worker_env()}
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, runtime_env=runtime_env,
                 logging_level=logging.WARNING)
        return False
    # A fresh local Ray even where another one runs here, on loopback (see gateway.cli).
    ray.init(address="local", _node_ip_address="127.0.0.1", namespace=NAMESPACE,
             runtime_env=runtime_env, include_dashboard=include_dashboard,
             dashboard_host="127.0.0.1", logging_level=logging.WARNING)
    return True
