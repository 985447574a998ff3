"""A Digitraffic-shaped weather-camera API, modelled on
``https://tie.digitraffic.fi/api/weathercam/v1`` (``/stations``, ``/stations/{id}``), plus
``/images/{presetId}.jpg`` serving real JPEGs with a ``Last-Modified`` header."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._background import BackgroundServer

API_PREFIX = "/api/weathercam/v1"
HTTP_DATE = "%a, %d %b %Y %H:%M:%S GMT"


@dataclass(frozen=True)
class Station:
    id: str
    name: str
    municipality: str
    municipality_code: str
    province: str
    province_code: str
    lon: float
    lat: float
    directions: tuple[str, ...] = ("INCREASING_DIRECTION", "DECREASING_DIRECTION")
    collection_status: str = "GATHERING"


STATIONS: tuple[Station, ...] = (
    Station("C01503", "Tie 1 Porvoo, Harabacka", "Porvoo", "638", "Uusimaa", "1", 25.6389, 60.3924),
    Station(
        "C01604",
        "Tie 7 Porvoo, Kulloo",
        "Porvoo",
        "638",
        "Uusimaa",
        "1",
        25.5050,
        60.3640,
        ("INCREASING_DIRECTION",),
    ),
    Station(
        "C01669", "Kehä I Helsinki, Konala", "Helsinki", "091", "Uusimaa", "1", 24.8561, 60.2310
    ),
    Station("C01680", "Tie 51 Espoo, Kivenlahti", "Espoo", "049", "Uusimaa", "1", 24.6390, 60.1510),
    Station(
        "C12500", "Tie 4 Oulu, Kaakkuri", "Oulu", "564", "Pohjois-Pohjanmaa", "17", 25.5089, 64.9600
    ),
    Station(
        "C04507",
        "Tie 9 Tampere, Hervanta",
        "Tampere",
        "837",
        "Pirkanmaa",
        "6",
        23.8400,
        61.4500,
        ("UNKNOWN",),
        "REMOVED_TEMPORARILY",
    ),
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # keys lower-cased


def preset_ids(station: Station) -> list[str]:
    return [f"{station.id}{i:02d}" for i in range(1, len(station.directions) + 1)]


def make_jpeg(preset_id: str, width: int = 1280, height: int = 720) -> bytes:
    image = np.full((height, width, 3), (120, 110, 90), np.uint8)
    cv2.rectangle(image, (0, height * 2 // 3), (width, height), (70, 70, 70), -1)  # road
    cv2.putText(image, preset_id, (40, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
    ok, data = cv2.imencode(".jpg", image)
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


class DigitrafficServer(BackgroundServer):
    def __init__(self, stations: tuple[Station, ...] = STATIONS) -> None:
        self.stations = {s.id: s for s in stations}
        self.updated = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)  # also the Last-Modified
        self.down = False
        self.hang_seconds: float = 30.0
        self.broken_image = False
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._jpegs: dict[str, bytes] = {}
        routes = [
            Route(f"{API_PREFIX}/stations", self._stations),
            Route(API_PREFIX + "/stations/{station_id}", self._station),
            Route("/images/{preset_id}.jpg", self._image),
        ]
        super().__init__(Starlette(routes=routes))

    @property
    def base_url(self) -> str:
        return self.root_url + API_PREFIX

    def image_url(self, preset_id: str) -> str:
        return f"{self.root_url}/images/{preset_id}.jpg"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
        self.down = self.broken_image = False
        self.hang_seconds = 30.0

    async def _enter(self, request: Request) -> Response | None:
        """Log the request; when ``down``, hang and then answer 503."""
        record = RecordedRequest(
            request.method,
            request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
        )
        with self._lock:
            self._requests.append(record)
        if self.down:
            await self.hang(self.hang_seconds)
            return JSONResponse({"message": "service unavailable"}, status_code=503)
        return None

    def _time(self) -> str:
        return self.updated.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _feature(self, station: Station, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "Feature",
            "id": station.id,
            "geometry": {"type": "Point", "coordinates": [station.lon, station.lat, 0.0]},
            "properties": {"id": station.id, "name": station.name, **properties},
        }

    async def _stations(self, request: Request) -> Response:
        if (hung := await self._enter(request)) is not None:
            return hung
        features = [
            self._feature(
                s,
                {
                    "collectionStatus": s.collection_status,
                    "state": None,
                    "dataUpdatedTime": self._time(),
                    "presets": [{"id": p, "inCollection": True} for p in preset_ids(s)],
                },
            )
            for s in self.stations.values()
        ]
        return JSONResponse(
            {"type": "FeatureCollection", "dataUpdatedTime": self._time(), "features": features}
        )

    async def _station(self, request: Request) -> Response:
        if (hung := await self._enter(request)) is not None:
            return hung
        station = self.stations.get(request.path_params["station_id"])
        if station is None:
            return JSONResponse({"status": 404, "message": "Not Found"}, status_code=404)
        place = station.name.split(" ", 2)[-1]
        presets = [
            {
                "id": pid,
                "presentationName": place.split(",")[-1].strip(),
                "inCollection": True,
                "resolution": "1280x720",
                "directionCode": str(n) if direction != "UNKNOWN" else "0",
                "imageUrl": self.image_url(pid),
                "direction": direction,
            }
            for n, (pid, direction) in enumerate(
                zip(preset_ids(station), station.directions, strict=True), start=1
            )
        ]
        return JSONResponse(
            self._feature(
                station,
                {
                    "names": {"fi": station.name, "sv": station.name, "en": station.name},
                    "collectionStatus": station.collection_status,
                    "state": None,
                    "dataUpdatedTime": self._time(),
                    "collectionInterval": 600,
                    "municipality": station.municipality,
                    "municipalityCode": station.municipality_code,
                    "province": station.province,
                    "provinceCode": station.province_code,
                    "presets": presets,
                },
            )
        )

    async def _image(self, request: Request) -> Response:
        if (hung := await self._enter(request)) is not None:
            return hung
        preset_id = request.path_params["preset_id"]
        if not any(preset_id in preset_ids(s) for s in self.stations.values()):
            return JSONResponse({"status": 404, "message": "Not Found"}, status_code=404)
        if self.broken_image:
            body = b"<html>this is not a JPEG</html>"
        else:
            if preset_id not in self._jpegs:
                self._jpegs[preset_id] = make_jpeg(preset_id)
            body = self._jpegs[preset_id]
        headers = {"Last-Modified": self.updated.strftime(HTTP_DATE)}
        return Response(body, media_type="image/jpeg", headers=headers)
