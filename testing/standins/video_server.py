"""An HTTP host for short OpenCV-made test videos that yt-dlp extracts and OpenCV reads.

Every rendition shows a yellow rectangle moving over a background whose colour depends on the
height (``BACKGROUND_BGR``), with its size drawn as text, so a test can tell which one was read.
Files are served with HTTP Range support (starlette's ``FileResponse``).
"""

from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ._background import BackgroundServer

SIZES: dict[int, tuple[int, int]] = {360: (640, 360), 720: (1280, 720), 1080: (1920, 1080)}
BACKGROUND_BGR: dict[int, tuple[int, int, int]] = {
    360: (200, 60, 30),  # blue
    720: (40, 160, 40),  # green
    1080: (40, 40, 200),  # red
}
BANDWIDTH: dict[int, int] = {360: 800_000, 720: 2_500_000, 1080: 5_000_000}
MEDIA_TYPES = {".mp4": "video/mp4", ".ts": "video/mp2t", ".m3u8": "application/vnd.apple.mpegurl"}


def render_frame(height: int, index: int, fps: int) -> np.ndarray:
    width = SIZES[height][0]
    frame = np.full((height, width, 3), BACKGROUND_BGR[height], np.uint8)
    side = height // 4
    x = (index * width // (3 * fps)) % (width - side)
    cv2.rectangle(frame, (x, height // 3), (x + side, height // 3 + side), (0, 230, 255), -1)
    label = f"{width}x{height} #{index}"
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, height / 360
    cv2.putText(frame, label, (10, height // 8), font, scale, (255, 255, 255), 2)
    return frame


def write_video(path: Path, height: int, frames: range, fps: int) -> None:
    """Write MPEG-4 Part 2 video into an .mp4 or an MPEG-TS (.ts) file."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZES[height])
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for index in frames:
        writer.write(render_frame(height, index, fps))
    writer.release()


def write_hls(root: Path, seconds: int, fps: int) -> None:
    """A master playlist plus one media playlist of one-second .ts segments per rendition."""
    master = ["#EXTM3U", "#EXT-X-VERSION:3"]
    for height, (width, _) in SIZES.items():
        media = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            "#EXT-X-TARGETDURATION:1",
            "#EXT-X-MEDIA-SEQUENCE:0",
            "#EXT-X-PLAYLIST-TYPE:VOD",
        ]
        (root / f"{height}p").mkdir(parents=True)
        for second in range(seconds):
            write_video(
                root / f"{height}p/seg{second}.ts",
                height,
                range(second * fps, (second + 1) * fps),
                fps,
            )
            if second:
                media.append("#EXT-X-DISCONTINUITY")  # each segment restarts its timestamps
            media += ["#EXTINF:1.000,", f"seg{second}.ts"]
        media.append("#EXT-X-ENDLIST")
        (root / f"{height}p/index.m3u8").write_text("\n".join(media) + "\n")
        master += [
            f"#EXT-X-STREAM-INF:BANDWIDTH={BANDWIDTH[height]},RESOLUTION={width}x{height}",
            f"{height}p/index.m3u8",
        ]
    (root / "master.m3u8").write_text("\n".join(master) + "\n")


def html5_page(root_url: str) -> str:
    """A page whose <video> sources yt-dlp's generic extractor lists as formats; only the
    360p one is labelled with its height."""
    return f"""<!DOCTYPE html><html><head><title>Test camera</title></head><body>
<video controls width="640">
<source src="{root_url}/media/video_360.mp4" type="video/mp4" res="360" label="360p">
<source src="{root_url}/media/video_1080.mp4" type="video/mp4">
</video></body></html>"""


class VideoServer(BackgroundServer):
    def __init__(self, seconds: int = 3, fps: int = 5, slow_seconds: float = 30.0) -> None:
        self.slow_seconds = slow_seconds
        self.dir = Path(tempfile.mkdtemp(prefix="standin-video-"))
        for height in SIZES:
            write_video(self.dir / f"video_{height}.mp4", height, range(seconds * fps), fps)
        write_hls(self.dir / "hls", seconds, fps)
        (self.dir / "not_a_video.mp4").write_bytes(b"this is not a video\n" * 500)
        routes = [
            Route("/media/{path:path}", self._media),
            Route("/slow.mp4", self._slow),
            Route("/page.html", self._page),
            Route("/no_video.html", self._no_video),
            # pages and playlists that lead elsewhere (`to`/`src`: any URL, e.g. a canary's)
            Route("/redirect", self._redirect),
            Route("/refresh.html", self._refresh),
            Route("/video.html", self._video_page),
            Route("/remote/{kind}.m3u8", self._remote_playlist),
        ]
        super().__init__(Starlette(routes=routes))

    @property
    def mp4_url(self) -> str:
        """Direct link to a 1280x720 MPEG-4 file."""
        return f"{self.root_url}/media/video_720.mp4"

    def mp4_url_for(self, height: int) -> str:
        return f"{self.root_url}/media/video_{height}.mp4"

    @property
    def hls_url(self) -> str:
        """HLS master playlist with 640x360, 1280x720 and 1920x1080 variants."""
        return f"{self.root_url}/media/hls/master.m3u8"

    def hls_variant_url(self, height: int) -> str:
        return f"{self.root_url}/media/hls/{height}p/index.m3u8"

    @property
    def page_url(self) -> str:
        """HTML page with a <video> element of two <source>s (360p labelled, 1080p not)."""
        return f"{self.root_url}/page.html"

    @property
    def not_a_video_url(self) -> str:
        """Text bytes served as ``video/mp4``: yt-dlp accepts it, OpenCV cannot read it."""
        return f"{self.root_url}/media/not_a_video.mp4"

    @property
    def no_video_page_url(self) -> str:
        """An HTML page with no media at all: yt-dlp raises 'Unsupported URL'."""
        return f"{self.root_url}/no_video.html"

    @property
    def slow_url(self) -> str:
        """Sends nothing for ``slow_seconds``, then a 504."""
        return f"{self.root_url}/slow.mp4"

    def redirect_url(self, to: str) -> str:
        """A 302 to `to`."""
        return f"{self.root_url}/redirect?{urlencode({'to': to})}"

    def refresh_url(self, to: str) -> str:
        """An HTML page whose ``<meta http-equiv="refresh">`` leads to `to`."""
        return f"{self.root_url}/refresh.html?{urlencode({'to': to})}"

    def video_page_url(self, src: str) -> str:
        """An HTML page with one ``<video src>``: yt-dlp lists it without fetching it."""
        return f"{self.root_url}/video.html?{urlencode({'src': src})}"

    def remote_playlist_url(self, kind: str, base: str) -> str:
        """A 360p HLS media playlist that fetches something from `base`: ``segments`` (every
        segment there), ``key`` (AES-128 key URI there, segments here) or ``map`` (an
        ``EXT-X-MAP`` init section there, segments here). yt-dlp lists it as one format
        without reading its entries; ffmpeg fetches them."""
        return f"{self.root_url}/remote/{kind}.m3u8?{urlencode({'to': base})}"

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _media(self, request: Request) -> Response:
        path = (self.dir / request.path_params["path"]).resolve()
        if not path.is_relative_to(self.dir.resolve()) or not path.is_file():
            return Response("not found", status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "text/plain"))

    async def _slow(self, request: Request) -> Response:
        await self.hang(self.slow_seconds)
        return Response("too late", status_code=504)

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(html5_page(self.root_url))

    async def _no_video(self, request: Request) -> Response:
        return HTMLResponse(
            "<!DOCTYPE html><html><head><title>Nothing</title></head>"
            "<body><p>No video here.</p></body></html>"
        )

    async def _redirect(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def _refresh(self, request: Request) -> Response:
        to = html.escape(request.query_params["to"], quote=True)
        return HTMLResponse(
            "<!DOCTYPE html><html><head><title>Moved</title>"
            f'<meta http-equiv="refresh" content="0; url={to}"></head>'
            "<body><p>This camera has moved.</p></body></html>"
        )

    async def _video_page(self, request: Request) -> Response:
        src = html.escape(request.query_params["src"], quote=True)
        return HTMLResponse(
            "<!DOCTYPE html><html><head><title>Camera</title></head><body>"
            f'<video controls src="{src}" type="video/mp4"></video></body></html>'
        )

    async def _remote_playlist(self, request: Request) -> Response:
        kind, base = request.path_params["kind"], request.query_params["to"].rstrip("/")
        local = f"{self.root_url}/media/hls/360p"
        lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:1",
                 "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
        if kind == "key":
            lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="{base}/key.bin",'
                         "IV=0x00000000000000000000000000000001")
        elif kind == "map":
            lines.append(f'#EXT-X-MAP:URI="{base}/init.mp4"')
        elif kind != "segments":
            return Response("not found", status_code=404)
        segments = len(list((self.dir / "hls/360p").glob("seg*.ts")))
        for second in range(segments):
            where = base if kind == "segments" else local
            lines += ["#EXTINF:1.000,", f"{where}/seg{second}.ts"]
        lines.append("#EXT-X-ENDLIST")
        return Response("\n".join(lines) + "\n", media_type=MEDIA_TYPES[".m3u8"])
