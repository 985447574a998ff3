"""A module of plain functions that tests allow `add_function_tools` to add."""


def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def _hidden(text: str) -> str:
    return text


def camera_link(host: str, location: str) -> str:
    """Link of the test camera at a location ('harbour' is the HD one, anything else SD)."""
    height = 720 if "harbour" in location.lower() else 360
    return f"{host.rstrip('/')}/media/video_{height}.mp4"


async def heavy_modules(ctx) -> str:  # noqa: ANN001 - the session's ToolContext
    """Which heavy libraries the process running this session's tools has loaded, and its pid."""
    import json
    import os
    import sys

    heavy = {"torch", "torchvision", "cv2", "matplotlib", "ultralytics", "yt_dlp"}
    libraries = ("libtorch", "/cv2/", "matplotlib/", "libopencv", "/ultralytics/")
    with open(f"/proc/{os.getpid()}/maps") as maps:
        mapped = sorted({line.split()[-1] for line in maps
                         if any(lib in line.split()[-1] for lib in libraries)})
    loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
    return json.dumps({"pid": os.getpid(), "modules": loaded, "libraries": mapped})
