"""An image a tool fetches is opened only as JPEG, PNG, WebP or GIF (API.md): EPS (which Pillow
would hand to Ghostscript), TIFF and BMP are "not an image" and never reach the vision model; a
fetched image over 16 megapixels is refused from its header, and a big JPEG is decoded reduced."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from testing.standins import Call, OpenAIServer, Text
from testing.standins._background import BackgroundServer
from tests.helpers import new_session, serving, turn

GATEWAY = "tools"  # conftest: the tool tests' gateway

QUESTION_MARKER = "Describe this image quantitatively"  # in the vision request only
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n"
       b"newpath 0 0 moveto 64 48 lineto stroke\nshowpage\n%%EOF\n")


def encoded(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (30, 160, 90) if mode == "RGB" else 1).save(out, fmt)
    return out.getvalue()


class FormatServer(BackgroundServer):
    """Images of several formats on 127.0.0.1, each served with a plausible image type."""

    def __init__(self) -> None:
        self.bodies = {
            "drawing.eps": (EPS, "image/jpeg"),
            "scan.tiff": (encoded("TIFF", (64, 48)), "image/tiff"),
            "icon.bmp": (encoded("BMP", (64, 48)), "image/bmp"),
            "photo.webp": (encoded("WEBP", (64, 48)), "image/webp"),
            "anim.gif": (encoded("GIF", (40, 30)), "image/gif"),
            "bomb.png": (encoded("PNG", (5000, 4000), "1"), "image/png"),  # 20 MP, ~10 KB
            "camera.jpg": (encoded("JPEG", (6000, 4000)), "image/jpeg"),  # 24 MP
        }
        super().__init__(Starlette(routes=[Route("/{name}", self._serve)]))

    def url(self, name: str) -> str:
        return f"{self.root_url}/{name}"

    async def _serve(self, request: Request) -> Response:
        body, kind = self.bodies[request.path_params["name"]]
        return Response(body, media_type=kind)


images = serving(FormatServer)


def sent_images(llm: OpenAIServer) -> list[Image.Image]:
    """The images the vision model got, decoded from their data: URLs."""
    found = []
    for request in llm.requests:
        for message in request["messages"]:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    assert url.startswith("data:image/jpeg;base64,")
                    found.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    return found


def test_eps_tiff_and_bmp_are_not_images(client: httpx.Client, fresh_llm: OpenAIServer,
                                         images: FormatServer) -> None:
    sid = new_session(client)
    names = ["drawing.eps", "scan.tiff", "icon.bmp"]
    results = turn(client, sid, fresh_llm, "look at these", [
        Call("ask_gpt4v_about_image_file", {"path": images.url(name)}) for name in names])
    assert len(results) == 3
    for name, result in zip(names, results, strict=True):
        assert "NotAnImage" in result and "not an image" in result, (name, result)
        assert "EPS" not in result and "TIFF" not in result and "BMP" not in result
    assert not sent_images(fresh_llm)  # no data: URL reached the vision model
    assert all(r.get("model") != "test-vision" for r in fresh_llm.requests)
    assert client.get(f"/api/sessions/{sid}/files").json() == []


def test_webp_and_gif_are_accepted(client: httpx.Client, fresh_llm: OpenAIServer,
                                   images: FormatServer) -> None:
    sid = new_session(client)
    fresh_llm.script(QUESTION_MARKER, [Text('{"car": 1}'), Text('{"car": 1}')])
    results = turn(client, sid, fresh_llm, "look at the good ones", [
        Call("ask_gpt4v_about_image_file", {"path": images.url("photo.webp")}),
        Call("ask_gpt4v_about_image_file", {"path": images.url("anim.gif")}),
    ])
    assert results == ['{"car": 1}', '{"car": 1}']
    sent = sent_images(fresh_llm)
    assert sorted(image.size for image in sent) == [(40, 30), (64, 48)]
    assert all(image.format == "JPEG" for image in sent)


def test_a_fetched_bomb_is_refused_and_a_big_jpeg_decoded_reduced(
        client: httpx.Client, fresh_llm: OpenAIServer, images: FormatServer) -> None:
    sid = new_session(client)
    fresh_llm.script(QUESTION_MARKER, [Text('{"car": 2}')])
    results = turn(client, sid, fresh_llm, "look at the big ones", [
        Call("ask_gpt4v_about_image_file", {"path": images.url("bomb.png")}),
        Call("ask_gpt4v_about_image_file", {"path": images.url("camera.jpg")}),
    ])
    assert "ImageTooLarge" in results[0] and "5000x4000" in results[0], results[0]
    assert "16 megapixels" in results[0]
    assert results[1] == '{"car": 2}'
    [sent] = sent_images(fresh_llm)
    assert sent.size == (2048, 1365)  # the vision model's high-detail size, from 6000x4000
