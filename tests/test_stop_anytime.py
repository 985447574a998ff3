"""`llmcam serve` (embedded Ray) stopped with SIGTERM at any moment exits within 30 s and leaves
no process behind: 2 s after start (Ray still starting), right after /healthz first answers
(the detector still deploying, with a model that cannot load offline), and once the detector
has failed, which the log reports once and `detect_objects` answers with."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testing.standins import Call, ToolCalls
from tests.helpers import free_port, spawn_serve, wait_healthy

STOP_WITHIN_S = 30.0


class Serve:
    """`llmcam serve` with its own embedded Ray, every process of it tagged in its environment."""

    def __init__(self, tmp: Path, llm) -> None:  # noqa: ANN001 - the OpenAI stand-in
        value = uuid.uuid4().hex
        self.tag = f"LLMCAM_TEST_TAG={value}".encode()
        self.port = free_port()
        self.log = tmp / "serve.log"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({"LLMCAM_DATA": str(tmp / "data"), "OPENAI_BASE_URL": llm.base_url,
                    "OPENAI_API_KEY": "k", "LLMCAM_MODEL": "test-model",
                    "LLMCAM_SPARE_SESSIONS": "1", "LLMCAM_YOLO_MODEL": "yolov8s.pt",
                    "LLMCAM_DETECTOR_GPUS": "0", "YOLO_OFFLINE": "1",
                    "YOLO_AUTOINSTALL": "False", "LLMCAM_TEST_TAG": value})
        self.started = time.monotonic()
        self.proc = spawn_serve(env, self.log, self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def tagged(self) -> list[str]:
        """Every live process carrying the tag: `pid name`."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                if self.tag in environ.split(b"\0"):
                    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
            except OSError:
                continue
        return found

    def wait_healthy(self, timeout: float = 120) -> None:
        wait_healthy(self.url, self.proc, self.log, timeout, every=0.1)

    def stop_and_check(self) -> None:
        """SIGTERM, then within 30 s: the gateway exited and no tagged process is left."""
        assert self.tagged(), "the tag is not visible: the check would prove nothing"
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WITHIN_S
        try:
            self.proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pass
        left = self.tagged()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.tagged()
        code = self.proc.poll()
        self.kill_leftovers()
        assert code is not None, "the gateway did not exit within 30 s: " + \
            self.log.read_text()[-2000:]
        assert not left, f"left behind: {left}\n{self.log.read_text()[-2000:]}"
        assert code == 0, self.log.read_text()[-2000:]

    def kill_leftovers(self) -> None:
        """Whatever a failed check left (this test's own processes only, by their tag)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for entry in self.tagged():
            try:
                os.kill(int(entry.split()[0]), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture()
def serve(tmp_path: Path, llm):  # noqa: ANN001, ANN201
    server = Serve(tmp_path, llm)
    yield server
    server.kill_leftovers()


def test_sigterm_two_seconds_after_start(serve: Serve) -> None:
    time.sleep(max(0.0, 2.0 - (time.monotonic() - serve.started)))
    serve.stop_and_check()


def test_sigterm_right_after_healthz_answers(serve: Serve) -> None:
    serve.wait_healthy()
    serve.stop_and_check()


def test_detector_that_cannot_load_is_reported_once(serve: Serve, llm) -> None:  # noqa: ANN001
    """An embedded server deploys the detector on first use: a model that cannot load is
    answered to the detection that asked, with the reason, and logged once."""
    serve.wait_healthy()
    with httpx.Client(base_url=serve.url, timeout=300) as c:
        sid = c.post("/api/sessions").json()["session_id"]
        image = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(image, "PNG")
        png = image.getvalue()
        upload = c.post(f"/api/sessions/{sid}/files", files={"file": ("dot.png", png)})
        assert upload.status_code in (200, 201), upload.text
        name = upload.json().get("name") or upload.json().get("filename")
        results = []
        for _ in range(2):  # the second detection gets the same answer, without a new deploy
            llm.reset()
            llm.script("detect please", [ToolCalls([Call("detect_objects",
                                                         {"image_path": name})])])
            reply = c.post(f"/api/sessions/{sid}/messages", json={"content": "detect please"})
            results += [m["content"] for m in reply.json()["messages"] if m["role"] == "tool"]
    assert all("cannot load YOLO model" in r for r in results), results
    deadline = time.monotonic() + 60  # (an actor's log line reaches the gateway's log)
    while "object detector could not start" not in serve.log.read_text():
        assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
        time.sleep(1)
    assert serve.log.read_text().count("object detector could not start") == 1
    serve.stop_and_check()
