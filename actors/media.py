"""Heavy media work as Ray tasks: stream capture (yt-dlp + OpenCV), image checks and re-encoding,
and plots (matplotlib).

A session actor imports this module, so only light things are imported at the top: OpenCV,
yt-dlp, PIL, numpy and matplotlib are imported inside the task functions, in Ray workers. The
session awaits the tasks with `run()`, which bounds their time and turns a failed task into its
own exception (not a Ray traceback), so the model reads a clear message.

yt-dlp and OpenCV connect on their own (redirects, refreshes, playlists, segments, keys): a
capture task runs them through a guarded proxy in its own process (`actors.net.proxy`), so each of
those connections passes the session's URL guard by the address it connects to.

Over 300 lines on purpose: each task is short, and all of them share the bounded runner
(`run`) and the rule that heavy libraries are imported only inside a task.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ray

from actors.errors import cause_of
from actors.net.guard import BlockedAddress, UrlGuard

if TYPE_CHECKING:
    from actors.net.proxy import GuardedProxy

MAX_WIDTH, MAX_HEIGHT = 1280, 720  # captures and detector input are stored at most this big
# What an image a tool fetches may be (API.md): only these Pillow decoders ever see its bytes,
# and OpenCV decodes only what Pillow recognised as one of them (their signatures are disjoint).
IMAGE_FORMATS = ["JPEG", "PNG", "WEBP", "GIF"]
MAX_PIXELS = 16_000_000  # an image decoded whole: a bigger one is refused from its header
# A JPEG is decoded reduced (1/2, 1/4 or 1/8, by libjpeg) to no less than the size that is kept,
# so a bigger one is accepted as long as what is decoded stays within MAX_PIXELS.
MAX_JPEG_PIXELS = 50_000_000
JPEG_QUALITY = 90
SOCKET_TIMEOUT_S = 10.0  # yt-dlp and OpenCV: a stream server that stops answering
PROBE_LIMIT = 3  # unlabelled formats opened to learn their size
PROXY_TIMEOUT_S = SOCKET_TIMEOUT_S + 5  # longer than the client's: it reports its own timeout
# yt-dlp's extractors a capture needs: YouTube (watch pages, channels' /live, live embeds), and
# any page with a <video> or a direct media link (html5, generic). Fewer extractors, fewer
# places that fetch on their own; all of them fetch through the guarded proxy anyway.
EXTRACTORS = ["youtube", "youtube:tab", "youtubelivestreamembed", "html5", "generic"]
# What ffmpeg may open: HTTP(S) (through the proxy: tcp reaches only the proxy on loopback),
# HLS's AES decryption and inline data; never file:, udp:, rtp:, rtmp: or a raw tcp: link.
FFMPEG_PROTOCOLS = "http,https,tls,tcp,httpproxy,crypto,data"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class MediaError(ValueError):
    """Input that is not what a tool needs; the message says what is wrong, for the model."""


class NotAnImage(MediaError):
    pass


class ImageTooLarge(MediaError):
    pass


class StreamError(MediaError):
    pass


# Light helpers, used in the session (pure Python) ------------------------------------------------

def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None if not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + length
    return None


def fits(width: int, height: int, max_w: int = MAX_WIDTH, max_h: int = MAX_HEIGHT) -> bool:
    """Within max_w x max_h, in either orientation (a portrait 720x1280 stream fits too)."""
    return max(width, height) <= max(max_w, max_h) and min(width, height) <= min(max_w, max_h)


def _dims(fmt: dict[str, Any]) -> tuple[int | None, int | None]:
    width, height = fmt.get("width"), fmt.get("height")
    if not (width and height):
        match = re.fullmatch(r"(\d+)x(\d+)", str(fmt.get("resolution") or ""))
        if match:
            width, height = int(match[1]), int(match[2])
    return (int(width) if width else None, int(height) if height else None)


def rank_formats(formats: Sequence[dict[str, Any]], max_w: int = MAX_WIDTH,
                 max_h: int = MAX_HEIGHT) -> list[dict[str, Any]]:
    """yt-dlp's formats, best first: labelled ones that fit (biggest first), then unlabelled
    ones (to be probed; yt-dlp lists worst first, so last first), then labelled ones that are
    too big (smallest first, to be downscaled). Audio-only and storyboard formats are dropped."""
    fitting, unknown, too_big = [], [], []
    for order, fmt in enumerate(formats):
        url = fmt.get("url")
        if not url or not str(url).startswith(("http://", "https://")):
            continue
        if fmt.get("vcodec") == "none" or fmt.get("protocol") in ("mhtml",) \
                or "storyboard" in str(fmt.get("format_note") or "").lower():
            continue
        width, height = _dims(fmt)
        entry = {"url": url, "format_id": str(fmt.get("format_id") or order),
                 "width": width, "height": height, "order": order,
                 "tbr": float(fmt.get("tbr") or 0)}
        if height is None:
            unknown.append(entry)
            continue
        guessed_w = width or round(height * 16 / 9)  # labelled by height only ("360p")
        entry["area"] = guessed_w * height
        (fitting if fits(guessed_w, height, max_w, max_h) else too_big).append(entry)
    fitting.sort(key=lambda e: (e["area"], e["tbr"], e["order"]), reverse=True)
    unknown.sort(key=lambda e: e["order"], reverse=True)
    too_big.sort(key=lambda e: (e["area"], -e["tbr"]))
    return fitting + unknown + too_big


async def run(task: Any, *args: Any, timeout: float, what: str) -> Any:
    """Run a Ray task and await it for at most `timeout` seconds; a failure raises the task's
    own exception (its message, not a remote traceback)."""
    ref = task.remote(*args)

    async def result() -> Any:
        return await ref

    try:
        return await asyncio.wait_for(result(), timeout)
    except TimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(f"{what} did not finish within {timeout:.0f} s") from None
    except ray.exceptions.RayTaskError as exc:
        cause = cause_of(exc)
        if cause is exc:
            raise RuntimeError(f"{what} failed: {type(exc).__name__}") from None
        raise cause from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.TaskCancelledError) as exc:
        raise RuntimeError(f"{what} failed: {type(exc).__name__}") from None


# Ray tasks: heavy imports happen inside ---------------------------------------------------------

def _quiet_opencv() -> None:
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class _SilentLogger:
    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


def _guarded_proxy(guard: UrlGuard) -> GuardedProxy:
    from actors.net.proxy import GuardedProxy

    return GuardedProxy(guard, timeout=PROXY_TIMEOUT_S)


def _refused() -> BlockedAddress:
    from actors.net.proxy import REFUSED_MESSAGE

    return BlockedAddress(REFUSED_MESSAGE)


@ray.remote(num_cpus=0.5, max_retries=0)
def resolve_stream(link: str, guard: UrlGuard, max_w: int = MAX_WIDTH,
                   max_h: int = MAX_HEIGHT) -> dict[str, Any]:
    """Ask yt-dlp what the link plays: its formats, ranked by `rank_formats`.

    Every request yt-dlp makes (the page, its redirects and refreshes, embeds, API calls) goes
    through a guarded proxy; when the guard stopped one, the answer says so and nothing else
    (yt-dlp's own text would name the hosts and ports it tried)."""
    import yt_dlp

    with _guarded_proxy(guard) as proxy:
        options = {"quiet": True, "no_warnings": True, "noprogress": True,
                   "skip_download": True, "noplaylist": True, "playlist_items": "1",
                   "cachedir": False, "socket_timeout": SOCKET_TIMEOUT_S, "retries": 0,
                   "extractor_retries": 0, "logger": _SilentLogger(), "proxy": proxy.url,
                   "allowed_extractors": EXTRACTORS}
        try:
            with yt_dlp.YoutubeDL(options) as ydl:  # type: ignore[arg-type]
                info = ydl.extract_info(link, download=False)
        except Exception as exc:  # yt-dlp wraps everything in DownloadError/ExtractorError
            if proxy.refused:
                raise _refused() from None
            message = _ANSI.sub("", str(exc)).removeprefix("ERROR: ").strip()
            message = message.split(" (caused by ")[0]
            raise StreamError(f"yt-dlp could not find a video stream at {link}: "
                              f"{message[:300]}") from None
    if info and info.get("_type") in ("playlist", "multi_video"):
        info = next((e for e in info.get("entries") or [] if e), None)
    if not info:
        raise StreamError(f"yt-dlp found nothing to play at {link}")
    formats = info.get("formats") or ([info] if info.get("url") else [])
    candidates = rank_formats(formats, max_w, max_h)
    if not candidates:
        raise StreamError(f"{link} has no video format that OpenCV could read")
    return {"title": info.get("title") or "", "is_live": bool(info.get("is_live")),
            "candidates": candidates}


@contextmanager
def _ffmpeg_through(proxy: GuardedProxy) -> Iterator[None]:
    """ffmpeg (inside OpenCV) reads `http_proxy` for every connection it makes, HLS segments,
    keys and redirects included, and CONNECTs through it for https; `no_proxy` would exempt
    hosts, so it is cleared. The options also limit the protocols it may open at all."""
    saved = {k: os.environ.get(k) for k in
             ("http_proxy", "no_proxy", "NO_PROXY", "OPENCV_FFMPEG_CAPTURE_OPTIONS")}
    os.environ["http_proxy"] = proxy.url
    os.environ.pop("no_proxy", None)
    os.environ.pop("NO_PROXY", None)
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"protocol_whitelist;{FFMPEG_PROTOCOLS}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@ray.remote(num_cpus=0.5, max_retries=0)
def grab_frame(candidates: list[dict[str, Any]], guard: UrlGuard, max_w: int = MAX_WIDTH,
               max_h: int = MAX_HEIGHT) -> dict[str, Any]:
    """One frame of the best format up to max_w x max_h, as a JPEG no bigger than that.

    Every connection OpenCV's ffmpeg makes goes through a guarded proxy (see
    `_ffmpeg_through`); a capture the guard stopped says so, without hosts or ports."""
    _quiet_opencv()
    import cv2

    with _guarded_proxy(guard) as proxy, _ffmpeg_through(proxy):
        chosen = _best_frame(cv2, candidates, max_w, max_h)
    if chosen is None:
        if proxy.refused:
            raise _refused()
        raise StreamError(f"OpenCV could not read a video frame from any of the {len(candidates)} "
                          "formats the link offers (not a video, or the server did not answer)")
    frame, candidate = chosen
    source_h, source_w = frame.shape[:2]
    frame = _downscale(cv2, frame, max_w, max_h)
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise StreamError("OpenCV could not encode the frame as JPEG")
    return {"jpeg": encoded.tobytes(), "width": frame.shape[1], "height": frame.shape[0],
            "source_width": source_w, "source_height": source_h,
            "format_id": candidate["format_id"]}


def _best_frame(cv2: Any, candidates: list[dict[str, Any]], max_w: int,
                max_h: int) -> tuple[Any, dict[str, Any]] | None:
    """A frame of the best format up to max_w x max_h, and its format; None if none reads.

    Labelled formats are trusted; unlabelled ones are opened to learn their size (a few at
    most), and win when they fit and are bigger than the best labelled one. When nothing fits,
    the smallest format that reads (downscaled later)."""
    timeout_ms = int(SOCKET_TIMEOUT_S * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
              timeout_ms]

    def read(url: str) -> Any:
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        try:
            if not capture.isOpened():
                return None
            ok, frame = capture.read()
            return frame if ok and frame is not None and frame.size else None
        finally:
            capture.release()

    labelled = [c for c in candidates if c.get("height")]
    fitting = [c for c in labelled if c.get("area") and fits(
        c.get("width") or round(c["height"] * 16 / 9), c["height"], max_w, max_h)]
    best_labelled = fitting[0]["area"] if fitting else 0
    chosen: tuple[Any, dict[str, Any]] | None = None
    probed: list[tuple[int, Any, dict[str, Any]]] = []  # unlabelled formats that fit
    oversize: list[tuple[int, Any, dict[str, Any]]] = []
    for candidate in [c for c in candidates if not c.get("height")][:PROBE_LIMIT]:
        frame = read(candidate["url"])
        if frame is None:
            continue
        height, width = frame.shape[:2]
        target = probed if fits(width, height, max_w, max_h) else oversize
        target.append((width * height, frame, candidate))
    if probed and max(probed, key=lambda item: item[0])[0] > best_labelled:
        _, frame, candidate = max(probed, key=lambda item: item[0])
        chosen = (frame, candidate)
    if chosen is None:
        for candidate in fitting:
            frame = read(candidate["url"])
            if frame is not None:
                chosen = (frame, candidate)
                break
    if chosen is None and probed:
        _, frame, candidate = max(probed, key=lambda item: item[0])
        chosen = (frame, candidate)
    if chosen is None:
        for candidate in (c for c in labelled if c not in fitting):
            frame = read(candidate["url"])
            if frame is not None:
                oversize.append((frame.shape[0] * frame.shape[1], frame, candidate))
                break
        if oversize:
            _, frame, candidate = min(oversize, key=lambda item: item[0])
            chosen = (frame, candidate)
    return chosen


def _downscale(cv2: Any, image: Any, max_w: int, max_h: int) -> Any:
    height, width = image.shape[:2]
    if fits(width, height, max_w, max_h):
        return image
    box_w, box_h = (max_w, max_h) if width >= height else (max_h, max_w)
    scale = min(box_w / width, box_h / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def jpeg_reduction(width: int, height: int, max_w: int, max_h: int) -> int:
    """The largest of 1, 2, 4, 8 by which a width x height JPEG can be decoded smaller and still
    be no smaller than the at most max_w x max_h image `_downscale` makes of it (the box turns
    with the image, so an EXIF rotation after decoding does not change this)."""
    box_w, box_h = (max_w, max_h) if width >= height else (max_h, max_w)
    over = max(width / box_w, height / box_h)
    return next((f for f in (8, 4, 2) if f <= over), 1)


def pixel_limit(kind: str, width: int, height: int, max_w: int, max_h: int) -> tuple[int, int]:
    """(pixels accepted for this image, the factor it is decoded reduced by)."""
    if kind != "JPEG":
        return MAX_PIXELS, 1
    factor = jpeg_reduction(width, height, max_w, max_h)
    decoded = -(-width // factor) * -(-height // factor)
    return (MAX_JPEG_PIXELS if decoded <= MAX_PIXELS else MAX_PIXELS), factor


@ray.remote(num_cpus=0.5, max_retries=0)
def to_jpeg(data: bytes, max_w: int = MAX_WIDTH, max_h: int = MAX_HEIGHT,
            quality: int = JPEG_QUALITY) -> dict[str, Any]:
    """Check that the bytes are a JPEG, PNG, WebP or GIF image of a sane size, and make a JPEG of
    at most max_w x max_h from it (the header is read first: anything else, and a huge image,
    is refused before decoding; a big JPEG is decoded reduced)."""
    import io

    _quiet_opencv()
    import cv2
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, with a clearer message
    try:
        # Only the accepted formats' parsers see the bytes: never EPS (Ghostscript), TIFF, ...
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
            # a JPEG with a second picture (phones' depth maps) is opened as MPO: still a JPEG
            kind = "JPEG" if probe.format == "MPO" else probe.format or "image"
    except Exception:
        head = data[:16]
        raise NotAnImage(f"the data is not an image ({len(data)} bytes starting {head!r}); "
                         "JPEG, PNG, WebP and GIF images are accepted") from None
    if kind not in IMAGE_FORMATS:  # a plugin that registered itself under another name
        raise NotAnImage(f"the data is not an image that is accepted ({kind}); JPEG, PNG, "
                         "WebP and GIF images are")
    limit, factor = pixel_limit(kind, width, height, max_w, max_h)
    if width * height > limit:
        raise ImageTooLarge(f"the image is {width}x{height} pixels; images up to "
                            f"{limit // 1_000_000} megapixels are accepted")
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:  # formats this OpenCV does not read (GIF, ...): PIL decodes them
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as pil:
                rgb = np.asarray(pil.convert("RGB"))
        except Exception:
            raise NotAnImage(f"the {kind} image could not be decoded (truncated or corrupt)")\
                from None
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    image = _downscale(cv2, image, max_w, max_h)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise NotAnImage("the image could not be encoded as JPEG")
    return {"jpeg": encoded.tobytes(), "width": image.shape[1], "height": image.shape[0],
            "source_width": width, "source_height": height, "format": kind}


@ray.remote(num_cpus=0.5, max_retries=0)
def render_plot(object_name: str, labels: list[str],
                series: dict[str, list[float | None]]) -> bytes:
    """A bar chart of an object's count per image, one bar group per method; PNG bytes."""
    import io

    os.environ.setdefault("MPLBACKEND", "Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = {"yolo": "#4c9be8", "gpt": "#e8744c"}
    figure = Figure(figsize=(max(6.0, 1.2 * len(labels) + 3), 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    width = 0.8 / max(1, len(series))
    for n, (method, counts) in enumerate(series.items()):
        offset = (n - (len(series) - 1) / 2) * width
        values = [0.0 if c is None else float(c) for c in counts]
        bars = axes.bar([p + offset for p in positions], values, width,
                        label=method.upper(), color=colors.get(method))
        for bar, count in zip(bars, counts, strict=True):
            text = "n/a" if count is None else f"{count:g}"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)
    axes.set_title(f"Number of {object_name} per image")
    axes.set_ylabel(f"{object_name} count")
    axes.set_xticks(positions, [f"Image {i + 1}\n{_short(label)}" for i, label in
                                enumerate(labels)], fontsize=7)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(axis="y", linestyle="--", alpha=0.6)
    if series:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else "…" + label[-(limit - 1):]
