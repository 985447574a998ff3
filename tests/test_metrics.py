"""Operators see sessions in Ray's own Prometheus export: live and stored sessions,
activations (cold and warm), passivations and sheds."""

from __future__ import annotations

import re
import time

import httpx
import ray

from tests.helpers import Gateway, new_session


def scrape() -> str:
    """Ray's metrics export of this node (what Prometheus or the dashboard reads)."""
    node = ray._private.worker.global_worker.node  # noqa: SLF001 - the port Ray chose
    return httpx.get(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=10).text


def value(text: str, name: str, **tags: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        if all(f'{k}="{v}"' in line for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_session_figures_are_in_rays_metrics(gateway: Gateway, fresh_llm) -> None:
    with gateway.client() as c:
        sid = new_session(c)
        assert c.post(f"/api/sessions/{sid}/messages", json={"content": "hi"}).is_success
    deadline = time.monotonic() + 60
    while True:  # Ray exports every few seconds
        text = scrape()
        names = set(re.findall(r"^(ray_llmcam_\w+?|llmcam_\w+?)(?:_total)?[{ ]", text, re.M))
        # (the stored count is taken every 30 s by the gateway: it may come a round later)
        if (value(text, "ray_llmcam_session_activations") >= 1
                and value(text, "ray_llmcam_sessions_live") >= 1
                and value(text, "ray_llmcam_sessions_stored") >= 1):
            break
        assert time.monotonic() < deadline, f"no session metrics exported yet: {sorted(names)}"
        time.sleep(1)
    # a figure that holds still stays in the export (Ray drops a gauge not set for ~30 s)
    time.sleep(40)
    text = scrape()
    assert value(text, "ray_llmcam_sessions_stored") >= 1, "the stored count left the export"
    assert value(text, "ray_llmcam_sessions_live") >= 1, "the live count left the export"


def test_tokens_and_refusals_are_in_rays_metrics(ray_address: str, llm,
                                                 tmp_path) -> None:
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, llm, spare_sessions=0, rate_turns=1)
    with Gateway(settings) as gw, gw.client(headers={"X-Forwarded-For": "10.9.8.7"}) as c:
        # (the peer is a trusted proxy: the limit counts for the address it names)
        sid = new_session(c)
        assert c.post(f"/api/sessions/{sid}/messages", json={"content": "hi"}).is_success
        assert c.post(f"/api/sessions/{sid}/messages",
                      json={"content": "again"}).status_code == 429
    deadline = time.monotonic() + 60
    while True:
        text = scrape()
        if (value(text, "ray_llmcam_llm_tokens", kind="prompt") >= 1
                and value(text, "ray_llmcam_llm_tokens", kind="completion") >= 1
                and value(text, "ray_llmcam_limited", limit="LLMCAM_RATE_TURNS") >= 1):
            break
        assert time.monotonic() < deadline, "no token or limit metrics exported yet"
        time.sleep(1)
