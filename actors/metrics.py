"""Operator-facing figures as Ray metrics: they appear in Ray's own Prometheus export and
dashboard (no server of ours). Made on first use, in the process that records them."""

from __future__ import annotations

import threading
import time
from functools import cache
from typing import Any

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


@cache
def _metrics() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge, Histogram

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
        "limited": Counter("llmcam_limited",
                           description="Requests refused by a per-user limit, by the limit's "
                           "variable (LLMCAM_RATE_TURNS, LLMCAM_USER_LIVE_SESSIONS, ...).",
                           tag_keys=("limit",)),
        # the turn path (actors/session/actor.py, actors/turn_loop.py)
        "turn_first_token": Histogram(
            "llmcam_turn_first_token_seconds", boundaries=LATENCY_BOUNDARIES,
            description="From a turn's start (its user message recorded) to its first "
            "streamed token."),
        "turn_done": Histogram(
            "llmcam_turn_seconds", boundaries=LATENCY_BOUNDARIES,
            description="From a turn's start to its end, by outcome (done, error, stopped).",
            tag_keys=("outcome",)),
        "turn_rounds": Histogram(
            "llmcam_turn_rounds", boundaries=[1, 2, 3, 5, 10],
            description="Model calls (rounds of function calling) one turn took."),
        "tool_calls": Counter("llmcam_tool_calls",
                              description="Tool calls the model asked for in chat turns."),
        "llm_errors": Counter("llmcam_llm_errors",
                              description="Model calls of chat turns that failed (the LLM "
                              "backend answered an error or could not be reached)."),
        "llm_tokens": Counter("llmcam_llm_tokens",
                              description="LLM tokens of model calls, by kind (prompt, "
                              "completion): the server's counts, else about four characters "
                              "a token.", tag_keys=("kind",)),
    }


# Ray drops a gauge's value from its export about 30 s after it was last set (measured
# with Ray 2.60): a figure that holds still, like the stored-session count, would vanish.
# The last value of each gauge is set again every REFRESH_SECONDS by one daemon thread.
REFRESH_SECONDS = 10.0
_gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_gauges_lock = threading.Lock()


def record(name: str, value: float = 1.0, **tags: str) -> None:
    """Count (or, for gauges, set; for histograms, observe) one figure; never fails the
    caller."""
    try:
        metric = _metrics()[name]
        if hasattr(metric, "observe"):
            metric.observe(value, tags=tags or None)
        elif hasattr(metric, "inc"):
            metric.inc(value, tags=tags or None)
        else:
            metric.set(value, tags=tags or None)
            with _gauges_lock:
                _gauges[(name, tuple(sorted(tags.items())))] = value
            _refresher()
    except Exception:  # metrics are for operators: a missing agent must not break a request
        pass


@cache
def _refresher() -> threading.Thread:
    thread = threading.Thread(target=_refresh_gauges, name="llmcam-gauges", daemon=True)
    thread.start()
    return thread


def _refresh_gauges() -> None:
    while True:
        time.sleep(REFRESH_SECONDS)
        with _gauges_lock:
            current = list(_gauges.items())
        for (name, tags), value in current:
            try:
                _metrics()[name].set(value, tags=dict(tags) or None)
            except Exception:
                pass
