"""Vision tools: ask the vision model about an image, detect objects with YOLO, plot counts.

Only light imports here: this module lives in the session actor. Images travel as JPEG bytes:
re-encoding (when an image is not a small enough JPEG) and plotting run as Ray tasks
(`actors.media`), detection in the detector deployment (`actors.detector`, imported when first
needed because it brings Ray Serve's client). Results name the files they make, with links
relative to the session (`files/<name>`): the session ID never reaches the model.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field

from actors import media
from actors.context import ToolContext
from actors.errors import LLMFailed
from actors.session.files import file_name, safe_stem

QUESTION = """
    Describe this image quantitatively as many as possible in json format.
    All the value should numbers.

    ##### EXAMPLE OUTPUT FORMAT
    {
        'timestamp': '2024-10-06T19:04:14',
        'location': 'Kauppatori',
        'dimensions': '1280 x 720',
        'building': 10,
        'buildings_height_range': '3-5 stories',
        'car': 5,
        'truck': 2,
        'boat': 4,
        'available_parking_space': 3,
        'street_lights': 20,
        'person': 10,
        'time_of_day': 'evening',
        'artificial_lighting': 'prominent',
        'visibility_clear': True,
        'sky_visible': True,
        'sky_light_conditions': 'dusk',
        'waterbodies_visible': True,
        'waterbodies_type': 'harbor'
    }
    """  # the original llmcam's prompt
VISION_MAX_SIDE = 2048  # what the vision model looks at in "high" detail
VISION_MAX_TOKENS = 800
VISION_CONCURRENCY = 4
MAX_PLOT_IMAGES = 40
PLURALS = {"person": ["people", "persons", "pedestrian", "pedestrians"], "people": ["person"]}


def _is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def _label(reference: str) -> str:
    """The file name of a reference (a session file name, a path, or a URL)."""
    return file_name(urlsplit(reference).path if _is_url(reference) else reference) or "image"


async def load_jpeg(ctx: ToolContext, reference: str, max_w: int = media.MAX_WIDTH,
                    max_h: int = media.MAX_HEIGHT) -> bytes:
    """The image as a JPEG of at most max_w x max_h: as it is when it already is one, else
    checked and re-encoded in a Ray task (which refuses non-images and huge images)."""
    if not _is_url(reference) and not file_name(reference):
        raise FileNotFoundError(f"no such file: {reference!r} is not a file name of this "
                                "session (list_image_files shows them)")
    try:
        data = await ctx.load_image(reference)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file in this session: {file_name(reference)!r} "
                                "(list_image_files shows this session's files)") from None
    size = media.jpeg_size(data)
    if size is not None and media.fits(*size, max_w, max_h):
        return data
    image = await media.run(media.to_jpeg, data, max_w, max_h, timeout=60,
                            what=f"reading the image {_label(reference)}")
    return image["jpeg"]


async def _ask(ctx: ToolContext, jpeg: bytes) -> str:
    """The vision model's answer about one image, sent inline as a data: URL (the model's server
    cannot read our files). The session's shared OpenAI client (`ctx.llm`) makes the call."""
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    request = {"model": ctx.settings.vision_model, "max_tokens": VISION_MAX_TOKENS,
               "messages": [{"role": "user", "content": [
                   {"type": "text", "text": QUESTION},
                   {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
               ]}]}
    try:
        return await ctx.llm.complete(request)
    except LLMFailed as exc:
        raise LLMFailed(f"the vision model {ctx.settings.vision_model!r} failed: {exc}"[:500])\
            from None


async def ask_gpt4v_about_image_file(
    ctx: ToolContext,
    path: Annotated[str, Field(description="Name of an image file of this session (as listed "
                               "by list_image_files) or an http(s) URL of an image")],
) -> str:
    """Tell all about quantitative information from a given image file (the vision model's
    JSON)."""
    jpeg = await load_jpeg(ctx, path, VISION_MAX_SIDE, VISION_MAX_SIDE)
    return await _ask(ctx, jpeg)


async def detect_objects(
    ctx: ToolContext,
    image_path: Annotated[str, Field(description="Name of an image file of this session (as "
                                     "listed by list_image_files) or an http(s) URL of an image")],
    conf: Annotated[float, Field(gt=0, le=1, description="Confidence threshold")] = 0.25,
) -> str:
    """Detect objects in an image with YOLO: counts per class, and an annotated image file."""
    from actors.detector import client as detector

    jpeg = await load_jpeg(ctx, image_path)
    result = await detector.detect(jpeg, conf, ctx.settings)
    stem = safe_stem(_label(image_path).rsplit(".", 1)[0])
    name = await ctx.files.save("detection", stem, result["image"], "jpg")
    return json.dumps({"counts": result["counts"], "total": sum(result["counts"].values()),
                       "file": name, "url": ctx.file_url(name),
                       "show": f"![{name}]({ctx.file_url(name)})"})


def parse_answer(text: str) -> dict[str, Any]:
    """The JSON object in a vision answer (code fences, single quotes and True tolerated)."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return {}
    body = match.group(0)
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(body)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return {}


def count_of(info: dict[str, Any], thing: str) -> float | None:
    """The count of `thing` in a vision answer or detector counts, by name, plural or singular."""
    wanted = thing.strip().lower().replace(" ", "_")
    names = [wanted, wanted + "s", wanted.removesuffix("s"), *PLURALS.get(wanted, [])]
    flat = {str(k).strip().lower().replace(" ", "_"): v for k, v in info.items()}
    for name in names:
        value = flat.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
            return float(value)
    return None


async def plot_object(
    ctx: ToolContext,
    images: Annotated[list[str], Field(description="Image file names of this session (or "
                                       "http(s) URLs), in the order to plot")],
    object: Annotated[str, Field(description="The object to count, in singular form, "
                                 "e.g. 'person' or 'car'")],
    methods: Annotated[list[str], Field(description="How to count: 'gpt' (the vision model) "
                                        "and/or 'yolo' (object detection)")] = ("gpt", "yolo"),
) -> str:
    """Generate (only when requested) a bar plot of the number of instances of an object in a
    list of images, counted by YOLO and/or the vision model."""
    if not images:
        return "No images given: pass the names of this session's images (list_image_files)."
    if len(images) > MAX_PLOT_IMAGES:
        raise ValueError(f"at most {MAX_PLOT_IMAGES} images per plot, got {len(images)}")
    wanted = [m.lower() for m in methods]
    use_yolo = any("yolo" in m for m in wanted)
    use_gpt = any("gpt" in m or "vision" in m for m in wanted)
    if not (use_yolo or use_gpt):
        raise ValueError(f"unknown methods {list(methods)}: use 'gpt' and/or 'yolo'")
    jpegs = await asyncio.gather(*(load_jpeg(ctx, ref) for ref in images))
    series: dict[str, list[float | None]] = {}
    if use_yolo:
        from actors.detector import client as detector

        found = await asyncio.gather(*(detector.detect(jpeg, 0.25, ctx.settings)
                                       for jpeg in jpegs))
        series["yolo"] = [count_of(r["counts"], object) or 0 for r in found]
    if use_gpt:
        limit = asyncio.Semaphore(VISION_CONCURRENCY)

        async def ask(jpeg: bytes) -> float | None:
            async with limit:
                return count_of(parse_answer(await _ask(ctx, jpeg)), object)

        series["gpt"] = list(await asyncio.gather(*(ask(jpeg) for jpeg in jpegs)))
    labels = [_label(ref) for ref in images]
    png = await media.run(media.render_plot, object, labels, series, timeout=60,
                          what="drawing the plot")
    name = await ctx.files.save("plot", f"{object}_count", png, "png")
    result: dict[str, Any] = {"object": object, "images": labels, "counts": series,
                              "file": name, "url": ctx.file_url(name),
                              "show": f"![{name}]({ctx.file_url(name)})"}
    if use_gpt and None in series["gpt"]:
        result["note"] = f"the vision model gave no count of {object!r} for some images (n/a)"
    return json.dumps(result)


TOOLS = [ask_gpt4v_about_image_file, detect_objects, plot_object]
