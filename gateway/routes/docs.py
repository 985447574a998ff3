"""The API's documentation page, Swagger UI, served by the gateway itself.

FastAPI's own /docs loads Swagger UI from a CDN and starts it with an inline script; that needs a
relaxed Content-Security-Policy on the origin whose local storage lists the browser's session
IDs, and shows a blank page on a machine without internet. Here the page (`static/docs/`) loads
Swagger UI's files from the `fastapi-offline` package (see `static/vendor/README.md`) and a
small start script of ours, all from this server, under the same strict CSP as every answer.
/openapi.json is FastAPI's own.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from gateway.routes.page import STATIC

PAGE = STATIC / "docs" / "index.html"
SWAGGER_UI = Path(str(importlib.resources.files("fastapi_offline") / "static"))
# what /docs/assets/ answers: nothing else from either folder
ASSETS = {
    "swagger-ui-bundle.js": SWAGGER_UI / "swagger-ui-bundle.js",
    "swagger-ui.css": SWAGGER_UI / "swagger-ui.css",
    "favicon.png": SWAGGER_UI / "favicon.png",
    "start.js": STATIC / "docs" / "start.js",
}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidated (ETag): a package update shows at once

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> FileResponse:
    return FileResponse(PAGE, headers=NO_CACHE)


@router.get("/docs/assets/{name}")
async def asset(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, "no such file")
    return FileResponse(path, headers=NO_CACHE)
