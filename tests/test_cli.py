"""`llmcam serve` on a laptop: its own Ray on loopback, a clean stop that takes that Ray along."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil

from testing.standins import Call, ToolCalls
from tests.helpers import free_port, serve_embedded, spawn_serve, wait_healthy


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_serve_with_embedded_ray(tmp_path: Path, llm) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"LLMCAM_DATA": str(tmp_path / "data"), "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "k", "LLMCAM_SPARE_SESSIONS": "1",
                "LLMCAM_YOLO_MODEL": "yolov8n.yaml", "YOLO_OFFLINE": "1"})
    proc = spawn_serve(env, log, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout=120)
        with httpx.Client(base_url=url, timeout=60) as c:
            sid = c.post("/api/sessions").json()["session_id"]
            reply = c.post(f"/api/sessions/{sid}/messages", json={"content": "laptop"})
            assert reply.json()["reply"] == "echo: laptop"
            assert c.get("/").status_code == 200 and "Send" in c.get("/").text
            assert c.get("/openapi.json").json()["info"]["title"] == "llmcam"
            assert c.get("/docs").status_code == 200
            # a laptop's server starts nothing it does not use: no dashboard modules, no
            # Serve controller or detector replica before the first detection, no worker ahead
            titles = [" ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(True)]
            unused = [t[:80] for t in titles if "Serve" in t or t.startswith("ray-dashboard-")
                      or t.startswith("ray::IDLE")]
            assert not unused, unused
            # the first detection deploys the detector, and gets its answer
            frame = np.full((360, 640, 3), (60, 130, 90), np.uint8)
            picture = cv2.imencode(".jpg", frame)[1].tobytes()
            name = c.post(f"/api/sessions/{sid}/files",
                          files={"file": ("road.jpg", picture, "image/jpeg")}).json()["name"]
            llm.script("detect on the laptop", [
                ToolCalls([Call("detect_objects", {"image_path": name})])])
            reply = c.post(f"/api/sessions/{sid}/messages", timeout=300,
                           json={"content": f"detect on the laptop {name}"})
            [result] = [m["content"] for m in reply.json()["messages"] if m["role"] == "tool"]
            assert isinstance(json.loads(result)["counts"], dict), result
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert any("gcs_server" in " ".join(p.cmdline()) for p in ray_procs)
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in {p.pid for p in ray_procs}]
        exposed = [(c.laddr, psutil.Process(c.pid).cmdline()[:3]) for c in listening
                   if not loopback(c.laddr.ip)]
        assert listening and not exposed, exposed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30  # the Ray it started goes with it
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ray_procs):
            assert time.monotonic() < deadline, [p.cmdline()[:2] for p in ray_procs
                                                 if p.is_running()]
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sid not in log.read_text()


def test_a_hard_kill_leaves_no_ray_behind_and_the_next_serve_has_every_session(
        tmp_path: Path, llm) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    proc, url = serve_embedded(data, log, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="k")
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            sid = c.post("/api/sessions").json()["session_id"]
            assert c.post(f"/api/sessions/{sid}/messages",
                          json={"content": "before the kill"}).status_code == 200
            assert c.get("/api/me").json()["llm_configured"] is True
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in ray_procs)
        # the GCS keeps a bounded number of dead actors' records (passivations leave them)
        [gcs] = [p for p in ray_procs if "gcs_server" in " ".join(p.cmdline())]
        assert gcs.environ()["RAY_maximum_gcs_destroyed_actor_cached_count"] == "1000"
        assert gcs.environ()["RAY_maximum_gcs_dead_worker_cached_count"] == "1000"
        assert gcs.environ()["RAY_task_events_max_num_task_in_gcs"] == "10000"
        proc.kill()  # SIGKILL: no shutdown code runs (an OOM kill, a power cut of the process)
        proc.wait(30)
        deadline = time.monotonic() + 30  # Ray's processes share the gateway's fate
        while left := [p for p in ray_procs
                       if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < deadline, [" ".join(p.cmdline()[:2]) for p in left]
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()

    # the next serve on the same data directory, this time with no LLM named: it says so at
    # start-up and on /api/me (the page's notice), and has the session whole
    proc, url = serve_embedded(data, log)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            history = c.get(f"/api/sessions/{sid}/messages")
            assert history.status_code == 200
            assert [m["content"] for m in history.json()] == ["before the kill",
                                                               "echo: before the kill"]
            assert c.get("/api/me").json()["llm_configured"] is False
        assert "no LLM configured: set OPENAI_API_KEY" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
