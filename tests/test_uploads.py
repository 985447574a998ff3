"""A user's own image: `POST /api/sessions/{sid}/files` takes a JPEG or PNG up to 10 MB, stores
it as a JPEG of kind `upload`, lists it, and the tools take it by name; anything else is refused
with a clear 413 or 415."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from testing.standins import Call, OpenAIServer, ToolCalls
from tests.conftest import Gateway, make_settings, new_session


@pytest.fixture(scope="module")
def gateway(ray_address: str, llm: OpenAIServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = make_settings(tmp_path_factory.mktemp("uploads"), llm, spare_sessions=1)
    with Gateway(settings, deploy_detector=True) as gw:
        yield gw


def picture(fmt: str, size: tuple[int, int] = (640, 360), mode: str = "RGB") -> bytes:
    colour = (40, 120, 200, 128) if mode == "RGBA" else (40, 120, 200)
    image = Image.new(mode, size, colour)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def upload(client: httpx.Client, sid: str, name: str, data: bytes,
           kind: str = "application/octet-stream") -> httpx.Response:
    return client.post(f"/api/sessions/{sid}/files", files={"file": (name, data, kind)})


def test_a_jpeg_is_listed_and_detect_objects_finds_it_by_name(
        client: httpx.Client, fresh_llm: OpenAIServer) -> None:
    sid = new_session(client)
    response = upload(client, sid, "My Harbour.jpg", picture("JPEG"), "image/jpeg")
    assert response.status_code == 201, response.text
    entry = response.json()
    assert set(entry) == {"name", "kind", "size", "created_at"}
    assert entry["kind"] == "upload" and entry["name"].startswith("upload_")
    assert entry["name"].endswith(".jpg") and entry["size"] > 0
    assert client.get(f"/api/sessions/{sid}/files").json() == [entry]
    stored = client.get(f"/api/sessions/{sid}/files/{entry['name']}")
    assert stored.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(stored.content)).size == (640, 360)

    fresh_llm.script("detect my picture", [
        ToolCalls([Call("detect_objects", {"image_path": entry["name"]})])])
    reply = client.post(f"/api/sessions/{sid}/messages",
                        json={"content": f"detect my picture {entry['name']}"})
    assert reply.status_code == 200, reply.text
    [result] = [m["content"] for m in reply.json()["messages"] if m["role"] == "tool"]
    found = json.loads(result)
    assert isinstance(found["counts"], dict)  # the untrained test network finds nothing
    kinds = {f["name"]: f["kind"] for f in client.get(f"/api/sessions/{sid}/files").json()}
    assert kinds[found["file"]] == "detection" and kinds[entry["name"]] == "upload"


def test_a_png_is_stored_as_jpeg(client: httpx.Client) -> None:
    sid = new_session(client)
    response = upload(client, sid, "../../etc/shot.png", picture("PNG", (300, 200), "RGBA"),
                      "image/png")
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    assert name.endswith(".jpg") and "/" not in name and "shot" in name
    stored = client.get(f"/api/sessions/{sid}/files/{name}").content
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (300, 200)


def test_what_is_not_a_jpeg_or_png_is_refused(client: httpx.Client) -> None:
    sid = new_session(client)
    text = upload(client, sid, "notes.txt", b"just some text\n" * 10, "text/plain")
    assert text.status_code == 415 and "JPEG or PNG" in text.json()["detail"]
    lying = upload(client, sid, "photo.jpg", b"<html>not an image</html>", "image/jpeg")
    assert lying.status_code == 415
    gif = upload(client, sid, "anim.gif", picture("GIF"), "image/gif")
    assert gif.status_code == 415
    assert client.get(f"/api/sessions/{sid}/files").json() == []


def test_over_10_mb_is_413(client: httpx.Client) -> None:
    sid = new_session(client)
    big = picture("PNG", (64, 64)) + b"\0" * (12 * 1024 * 1024)  # a PNG with 12 MB behind it
    response = upload(client, sid, "big.png", big, "image/png")
    assert response.status_code == 413 and "10 MB" in response.json()["detail"]
    # other bodies keep their 1 MB limit
    response = client.post(f"/api/sessions/{sid}/messages", content=b"x" * (2 * 1024 * 1024),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "1 MB" in response.json()["detail"]
    assert client.get(f"/api/sessions/{sid}/files").json() == []


def test_unknown_session_is_404(client: httpx.Client) -> None:
    response = upload(client, "no-such-session", "a.jpg", picture("JPEG"), "image/jpeg")
    assert response.status_code == 404
