"""Operator-facing figures as Ray metrics: they appear in Ray's own Prometheus export and
dashboard (no server of ours). Made on first use, in the process that records them."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _metrics() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge

    return {
        "live": Gauge("llmcam_sessions_live",
                      description="Session actors live in the cluster."),
        "stored": Gauge("llmcam_sessions_stored",
                        description="Sessions in the store (live or not)."),
        "activations": Counter("llmcam_session_activations",
                               description="Session actors brought up for a request: warm "
                               "(found live, or a spare handed over) or cold (a process start).",
                               tag_keys=("kind",)),
        "passivations": Counter("llmcam_session_passivations",
                                description="Session actors that ended themselves: idle for "
                                "LLMCAM_IDLE_SECONDS, or shed to make room under the cap.",
                                tag_keys=("reason",)),
        "sheds": Counter("llmcam_session_sheds",
                         description="Requests refused with 503 because every live session "
                         "actor was busy and the cap was reached."),
    }


def record(name: str, value: float = 1.0, **tags: str) -> None:
    """Count (or, for gauges, set) one figure; never fails the caller."""
    try:
        metric = _metrics()[name]
        if hasattr(metric, "inc"):
            metric.inc(value, tags=tags or None)
        else:
            metric.set(value, tags=tags or None)
    except Exception:  # metrics are for operators: a missing agent must not break a request
        pass
