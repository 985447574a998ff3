"""Vision tools through real chat turns: the vision model (the OpenAI stand-in) gets the image
inline, YOLO detection through the detector deployment, plots; bad images answer clearly."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib

import cv2
import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from testing.standins import Call, DigitrafficServer, OpenAIServer, Text
from testing.standins._background import BackgroundServer
from tests.helpers import new_session, serving, turn

GATEWAY = "tools"  # conftest: the tool tests' gateway

QUESTION_MARKER = "Describe this image quantitatively"  # in the vision request only
SAVED = re.compile(r"saved it as (\S+?)\. ")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header announcing a huge image, and a few bytes of pixels: it must be
    refused from its header, never decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + \
        png_chunk(b"IEND", b"")


def encoded(ext: str, width: int, height: int, bgr: tuple[int, int, int] = (90, 120, 60)) -> bytes:
    ok, data = cv2.imencode(ext, np.full((height, width, 3), bgr, np.uint8))
    assert ok
    return data.tobytes()


class ImageServer(BackgroundServer):
    """Images and not-images on 127.0.0.1."""

    def __init__(self) -> None:
        self.bodies = {"huge.png": (huge_png(), "image/png"),
                       "text.jpg": (b"<html>this is not an image</html>", "image/jpeg"),
                       "photo.png": (encoded(".png", 800, 600), "image/png"),
                       "big.jpg": (encoded(".jpg", 1920, 1080), "image/jpeg")}
        super().__init__(Starlette(routes=[Route("/{name}", self._serve)]))

    def url(self, name: str) -> str:
        return f"{self.root_url}/{name}"

    async def _serve(self, request: Request) -> Response:
        if request.path_params["name"] not in self.bodies:
            return Response(b"not found", status_code=404, media_type="text/plain")
        body, kind = self.bodies[request.path_params["name"]]
        return Response(body, media_type=kind)


images = serving(ImageServer)


@pytest.fixture(scope="module")
def session(client: httpx.Client, llm: OpenAIServer) -> tuple[str, list[str]]:
    """A session with two weather-camera captures."""
    sid = new_session(client)
    results = turn(client, sid, llm, "capture two cameras",
                   [Call("cap", {"key": "Porvoo"}), Call("cap", {"key": "Oulu"})])
    return sid, [SAVED.search(r)[1] for r in results]  # type: ignore[index]


def vision_requests(llm: OpenAIServer) -> list[dict]:
    return [r for r in llm.requests if r.get("model") == "test-vision"]


def test_vision_model_gets_the_image_inline(client: httpx.Client, session: tuple[str, list[str]],
                                            fresh_llm: OpenAIServer) -> None:
    sid, (porvoo, _) = session
    fresh_llm.script(QUESTION_MARKER, [Text('```json\n{"car": 3, "person": 1}\n```'),
                                       Text('{"car": 4}')])
    results = turn(client, sid, fresh_llm, "what is in the Porvoo picture?", [
        Call("ask_gpt4v_about_image_file", {"path": porvoo}),
    ])
    assert results == ['```json\n{"car": 3, "person": 1}\n```']
    # a path's directory part is ignored: still this session's file
    results = turn(client, sid, fresh_llm, "and by its path?", [
        Call("ask_gpt4v_about_image_file", {"path": f"/srv/data/{porvoo}"}),
    ])
    assert results == ['{"car": 4}']
    requests = vision_requests(fresh_llm)
    assert len(requests) == 2
    [message] = requests[0]["messages"]
    text, picture = message["content"]
    assert message["role"] == "user" and text["type"] == "text"
    assert "quantitatively" in text["text"] and "json" in text["text"]
    url = picture["image_url"]["url"]
    assert picture["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    sent = base64.b64decode(url.split(",", 1)[1])
    assert sent == client.get(f"/api/sessions/{sid}/files/{porvoo}").content


def test_detect_objects(client: httpx.Client, session: tuple[str, list[str]],
                        fresh_llm: OpenAIServer, digitraffic: DigitrafficServer,
                        images: ImageServer) -> None:
    sid, (porvoo, _) = session
    results = turn(client, sid, fresh_llm, "detect objects everywhere", [
        Call("detect_objects", {"image_path": porvoo}),
        Call("detect_objects", {"image_path": digitraffic.image_url("C0166901"), "conf": 0.5}),
        Call("detect_objects", {"image_path": images.url("photo.png")}),
        Call("detect_objects", {"image_path": images.url("big.jpg")}),
    ])
    found = [json.loads(r) for r in results]
    sizes = [(720, 1280), (720, 1280), (600, 800), (720, 1280)]  # big.jpg: downscaled first
    listed = {f["name"]: f["kind"] for f in client.get(f"/api/sessions/{sid}/files").json()}
    for result, size in zip(found, sizes, strict=True):
        assert isinstance(result["counts"], dict)  # an untrained network finds nothing
        assert result["total"] == sum(result["counts"].values())
        assert result["url"] == f"files/{result['file']}"
        assert result["file"].startswith("detection_") and listed[result["file"]] == "detection"
        response = client.get(f"/api/sessions/{sid}/{result['url']}")
        assert response.headers["content-type"] == "image/jpeg"
        picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == size
    assert porvoo.removesuffix(".jpg")[:20] in found[0]["file"]


def test_bad_images_answer_clearly(client: httpx.Client, fresh_llm: OpenAIServer,
                                   images: ImageServer) -> None:
    sid = new_session(client)
    results = turn(client, sid, fresh_llm, "look at the bad ones", [
        Call("detect_objects", {"image_path": "cap_2026.01.01_00.00.00_nowhere.jpg"}),
        Call("detect_objects", {"image_path": images.url("text.jpg")}),
        Call("detect_objects", {"image_path": images.url("huge.png")}),
        Call("detect_objects", {"image_path": images.url("missing.jpg")}),
        Call("detect_objects", {"image_path": images.url("photo.png"), "conf": 0}),
        Call("ask_gpt4v_about_image_file", {"path": images.url("text.jpg")}),
        Call("ask_gpt4v_about_image_file", {"path": "../"}),
    ])
    assert "FileNotFoundError: no such file in this session" in results[0]
    assert "NotAnImage: the data is not an image" in results[1]
    assert "ImageTooLarge" in results[2] and "30000x30000" in results[2]
    assert "404" in results[3]
    assert results[4].startswith("Error: invalid arguments for detect_objects: conf")
    assert "NotAnImage" in results[5]
    assert "no such file" in results[6]
    assert not vision_requests(fresh_llm)  # nothing reached the vision model
    assert client.get(f"/api/sessions/{sid}/files").json() == []
    reply = client.post(f"/api/sessions/{sid}/messages", json={"content": "ok?"})
    assert reply.json()["reply"] == "echo: ok?"


def test_plot_object(client: httpx.Client, session: tuple[str, list[str]],
                     fresh_llm: OpenAIServer) -> None:
    sid, names = session
    fresh_llm.script(QUESTION_MARKER, [Text('{"car": 3, "person": 1}'),
                                       Text("```json\n{'cars': 5, 'visibility_clear': True}\n```")])
    results = turn(client, sid, fresh_llm, "plot the cars", [
        Call("plot_object", {"images": names, "object": "car"}),
        Call("plot_object", {"images": names, "object": "person", "methods": ["YOLO"]}),
    ])
    both, yolo_only = (json.loads(r) for r in results)
    assert both["images"] == names
    assert both["counts"]["yolo"] == [0, 0]  # the untrained test network finds nothing
    assert sorted(both["counts"]["gpt"]) == [3, 5]  # 'cars' counts as car
    assert yolo_only["counts"] == {"yolo": [0, 0]}
    assert len(vision_requests(fresh_llm)) == 2
    listed = {f["name"]: f["kind"] for f in client.get(f"/api/sessions/{sid}/files").json()}
    for plot in (both, yolo_only):
        assert listed[plot["file"]] == "plot" and plot["file"].endswith(".png")
        response = client.get(f"/api/sessions/{sid}/{plot['url']}")
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG")
        picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[0] >= 300 and picture.shape[1] >= 500
