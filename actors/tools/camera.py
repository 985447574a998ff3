"""Camera tools: live streams (yt-dlp + OpenCV) and the Digitraffic weather cameras.

Only light imports here: this module lives in the session actor. Capturing, decoding and
re-encoding run as Ray tasks (`actors.media`), which run yt-dlp and OpenCV through a proxy that
checks every connection they make with the session's guard (those libraries connect on their
own: redirects, refreshes, playlists, segments, keys). Results name the files they make, with a
link relative to the session (`files/<name>`): the session ID never reaches the model.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import Field

from actors import media
from actors.context import ToolContext
from actors.session.files import safe_stem

if TYPE_CHECKING:
    import httpx

DEFAULT_LIVE_URL = "https://www.youtube.com/watch?v=LMZQ7eFhm58"  # Näkymä Helsingistä
SANTA_URL = "https://www.youtube.com/watch?v=Cp4RRAEgpeU"
PARKING_URL = "https://www.youtube.com/watch?v=mwN6l3O1MNI"
DIGITRAFFIC_HEADERS = {"Digitraffic-User": "llmcam/0.1"}
CAMERA_TIMEOUT_S = 10.0  # a camera service that does not answer: a clear error after this
BOOK_DEADLINE_S = 30.0
BOOK_CONCURRENCY = 8
BOOK_MAX_CHARS = 14_000
KNOWN_PLACES_SHOWN = 40


# Live streams -----------------------------------------------------------------------------------

async def select_youtube_live_url(
    ctx: ToolContext,
    location: Annotated[str, Field(description=(
        "Location of the live camera: 'Santa' for Santa Claus Village, 'Parking' for a parking "
        "lot, anything else for the default Helsinki view"))],
    provider: Annotated[str, Field(description="Provider of the live stream")] = "YouTube",
) -> str:
    """Select a YouTube Live URL based on the location and provider."""
    place = location.lower()
    if "santa" in place:
        return SANTA_URL
    if "parking" in place:
        return PARKING_URL
    return DEFAULT_LIVE_URL


async def capture_youtube_live_frame(
    ctx: ToolContext,
    link: Annotated[str | None, Field(description=(
        "Link of the live stream or video page (YouTube or any page yt-dlp understands); "
        "default: the Helsinki live view"))] = None,
    place: Annotated[str | None, Field(description="Name of the place shown, for the file name")]
    = None,
) -> str:
    """Capture a JPEG image from a YouTube Live stream (or another video link) and save it."""
    link = (link or DEFAULT_LIVE_URL).strip()
    await ctx.guard.check_url(link)  # a clear answer before any task starts
    stream = await media.run(media.resolve_stream, link, ctx.guard, timeout=90,
                            what="resolving the stream")
    frame = await media.run(media.grab_frame, stream["candidates"], ctx.guard, timeout=150,
                            what="capturing a frame from the stream")
    stem = place or stream.get("title") or urlsplit(link).hostname or "live"
    name = await ctx.files.save("capture", safe_stem(stem), frame["jpeg"], "jpg")
    size = f"{frame['width']}x{frame['height']}"
    if (frame["source_width"], frame["source_height"]) != (frame["width"], frame["height"]):
        size += f" (downscaled from {frame['source_width']}x{frame['source_height']})"
    return (f"Captured a {size} frame from {link} and saved it as {name}. "
            f"Show it with ![{name}]({ctx.file_url(name)})")


# Digitraffic weather cameras ---------------------------------------------------------------------

class _Weathercam:
    """The operator's weather-camera API (trusted: it is configuration, not model input). Image
    URLs it answers with are fetched through the guard unless they are on the API's own host."""

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.base = ctx.settings.weathercam_url.rstrip("/")
        self.origin = urlsplit(self.base)[:2]

    async def __aenter__(self) -> _Weathercam:
        import httpx  # loaded on first use: most sessions never fetch anything

        self.httpx = httpx
        self.timeout = httpx.Timeout(CAMERA_TIMEOUT_S, connect=5.0)
        self.client: httpx.AsyncClient = httpx.AsyncClient(
            timeout=self.timeout, headers=DIGITRAFFIC_HEADERS, trust_env=False,
            follow_redirects=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def _get(self, client: httpx.AsyncClient, url: str) -> tuple[int, bytes, Any]:
        """(status, body, headers) of a GET; the body is read up to `max_fetch_bytes`, counted
        while it arrives, and only when the status is a success."""
        from actors.net.client import read_limited

        async with client.stream("GET", url, headers=DIGITRAFFIC_HEADERS,
                                 timeout=self.timeout) as response:
            if not response.is_success:
                return response.status_code, b"", response.headers
            body = await read_limited(response, self.ctx.settings.max_fetch_bytes)
            return response.status_code, body, response.headers

    async def get_json(self, path: str) -> Any:
        url = self.base + path
        try:
            status, body, _ = await self._get(self.client, url)
        except self.httpx.TimeoutException:
            raise TimeoutError(f"the weather-camera service ({urlsplit(url).netloc}) did not "
                               f"answer within {CAMERA_TIMEOUT_S:.0f} s") from None
        except self.httpx.TransportError as exc:
            raise ConnectionError(f"the weather-camera service ({urlsplit(url).netloc}) is not "
                                  f"reachable: {exc or type(exc).__name__}") from None
        except ValueError:
            raise RuntimeError(f"the weather-camera service sent more than "
                               f"{self.ctx.settings.max_fetch_bytes} bytes for {path}") from None
        if not 200 <= status < 300:
            raise RuntimeError(f"the weather-camera service answered HTTP {status} for {path}")
        try:
            return json.loads(body)
        except ValueError:
            raise RuntimeError(f"the weather-camera service sent no JSON for {path}") from None

    async def stations(self) -> list[dict[str, Any]]:
        data = await self.get_json("/stations")
        features = data.get("features") if isinstance(data, dict) else None
        return [f for f in features or [] if isinstance(f, dict) and f.get("id")]

    async def station(self, station_id: str) -> dict[str, Any]:
        data = await self.get_json("/stations/" + quote(str(station_id), safe=""))
        return (data or {}).get("properties") or {}

    async def image(self, url: str) -> tuple[bytes, str | None]:
        """The camera's current image (bytes, Last-Modified)."""
        trusted = urlsplit(url)[:2] == self.origin
        client = self.client if trusted else self.ctx.http
        limit = self.ctx.settings.max_fetch_bytes
        try:
            status, body, headers = await self._get(client, url)
        except self.httpx.TimeoutException:
            raise TimeoutError(f"the camera image at {url} did not arrive within "
                               f"{CAMERA_TIMEOUT_S:.0f} s") from None
        except ValueError:
            raise media.ImageTooLarge(f"the camera image at {url} is larger than {limit} "
                                      "bytes") from None
        if not 200 <= status < 300:
            raise RuntimeError(f"the camera image at {url} answered HTTP {status}")
        return body, headers.get("last-modified")


def _address(preset: dict[str, Any], station: dict[str, Any]) -> str:
    parts = [preset.get("presentationName"), (station.get("names") or {}).get("fi"),
             station.get("municipality"), station.get("province")]
    return ", ".join(str(p) for p in parts if p)


def _matches(name: str, key: str) -> bool:
    words = key.lower().replace(",", " ").split()
    return bool(words) and all(word in name.lower() for word in words)


async def camera_address_book(
    ctx: ToolContext,
    update: Annotated[bool, Field(description="Rebuild the address book instead of reusing "
                                  "the one made earlier in this turn")] = False,
) -> str:
    """Get the weather-camera address book: each camera's address and the URL of its current image.

    Pass a place name from it to `cap` to capture that camera, or an image URL to the vision tools.
    """
    cached = ctx.extra.get("camera_address_book")
    if cached is not None and not update:
        return cached
    async with _Weathercam(ctx) as cam:
        stations = await cam.stations()
        limit = asyncio.Semaphore(BOOK_CONCURRENCY)

        async def presets(station: dict[str, Any]) -> list[dict[str, str]]:
            async with limit:
                try:
                    props = await cam.station(station["id"])
                except (TimeoutError, ConnectionError, RuntimeError):
                    return []
            return [{"address": _address(p, props), "camera": str(p.get("id", "")),
                     "url": p["imageUrl"]}
                    for p in props.get("presets") or []
                    if p.get("imageUrl") and p.get("inCollection", True)]

        tasks = [asyncio.ensure_future(presets(s)) for s in stations]
        done, pending = await asyncio.wait(tasks, timeout=BOOK_DEADLINE_S) if tasks \
            else (set(), set())
        for task in pending:
            task.cancel()
    entries = [e for task in tasks if task in done for e in task.result()]
    listed: list[dict[str, str]] = []
    size = 0
    for entry in entries:
        size += len(json.dumps(entry, ensure_ascii=False)) + 2
        if size > BOOK_MAX_CHARS:
            break
        listed.append(entry)
    book: dict[str, Any] = {"cameras": len(entries), "listed": len(listed), "entries": listed}
    notes = []
    if len(listed) < len(entries):
        notes.append(f"{len(entries) - len(listed)} more cameras are not listed here; call cap "
                     "with a place name to capture any of them")
    if pending:
        notes.append(f"{len(pending)} of {len(stations)} stations did not answer in time")
    if notes:
        book["note"] = "; ".join(notes)
    result = json.dumps(book, ensure_ascii=False)
    ctx.extra["camera_address_book"] = result
    return result


async def cap(
    ctx: ToolContext,
    key: Annotated[str, Field(description="Place name (town, road or spot) of the weather "
                              "camera, e.g. 'Porvoo' or 'Helsinki Konala'")] = "Porvoo",
) -> str:
    """Capture the current image of a weather camera at a place, save it, and return its name."""
    async with _Weathercam(ctx) as cam:
        stations = await cam.stations()
        matches = [s for s in stations
                   if _matches(str((s.get("properties") or {}).get("name", "")), key)]
        if not matches:
            names = sorted({str((s.get("properties") or {}).get("name", "")) for s in stations}
                           - {""})
            shown = ", ".join(names[:KNOWN_PLACES_SHOWN])
            more = f" and {len(names) - KNOWN_PLACES_SHOWN} more" \
                if len(names) > KNOWN_PLACES_SHOWN else ""
            return (f"No weather camera matches {key!r}. Cameras I know include: {shown}{more}. "
                    "Try one of these place names, or camera_address_book for the full list.")
        matches.sort(key=lambda s: (s.get("properties") or {}).get("collectionStatus")
                     != "GATHERING")
        for station in matches[:3]:
            props = await cam.station(station["id"])
            presets = [p for p in props.get("presets") or []
                       if p.get("imageUrl") and p.get("inCollection", True)]
            if presets:
                break
        else:
            return f"The weather cameras matching {key!r} have no images available right now."
        preset = presets[0]
        data, modified = await cam.image(preset["imageUrl"])
    image = await media.run(media.to_jpeg, data, timeout=60, what="checking the camera image")
    stem = f"{preset.get('presentationName') or key}_{preset.get('id') or station['id']}"
    name = await ctx.files.save("capture", safe_stem(stem), image["jpeg"], "jpg")
    taken = f", image from {modified}" if modified else ""
    return (f"Captured the weather camera at {_address(preset, props)} (camera "
            f"{preset.get('id', '?')}{taken}) and saved it as {name}. "
            f"Show it with ![{name}]({ctx.file_url(name)})")


TOOLS = [select_youtube_live_url, capture_youtube_live_frame, camera_address_book, cap]
