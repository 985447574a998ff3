"""Detection throughput: llmcam's batched Serve detector against ultralytics used directly and
the original llmcam's pattern (the model loaded on every call).

    python -m benchmarks.detect_throughput                        # CPU here: 8 sessions
    python -m benchmarks.detect_throughput --model yolov8s.pt      # on a GPU node: 64 sessions

"Sessions" are C concurrent asyncio tasks in this process, each with its own ToolContext (own
in-memory files) calling the real `detect_objects` tool: file read, JPEG header check, the
detector deployment (its Serve handle, batched with the other sessions' requests), the
annotated JPEG saved back. The chat loop is left out on purpose: with the zero-latency LLM
stand-in it would only add the fake model's turn time. Every session sends 720p JPEG frames
one after the other (closed loop). The two baselines run in this process on the same frames,
doing the same work per image (decode, detect, draw, encode to JPEG).

Offline: a `.pt` model that is not on disk falls back to its `.yaml` (an untrained network of
the same shape: same compute, no detections). Prints a Markdown table and writes it into
benchmarks/RESULTS.md between `<!-- detect_throughput -->` markers.

Over 300 lines on purpose: a benchmark reads top to bottom as one script (its scenario, its
same-run baseline, its table); what scripts share is in _harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import ray

from actors.context import ToolContext, Web
from actors.detector import client as detector
from actors.net.guard import UrlGuard
from actors.session.files import PREFIX, file_name, safe_stem
from actors.settings import Settings, worker_env
from actors.tools import vision
from benchmarks._harness import RESULTS, ROOT, cpu_model, publish

# what this process's Ray workers get (the raylets started here hand PYTHONPATH on too)
WORKER_ENV = {**worker_env(), "PYTHONPATH": str(ROOT)}
MARK = "detect_throughput"


# frames -----------------------------------------------------------------------------------------

def make_frames(count: int) -> list[bytes]:
    """720p JPEGs from ultralytics' sample photos (people, a bus), shifted and mirrored so
    no two are the same."""
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    photos = [cv2.imread(str(p)) for p in sorted(assets.glob("*.jpg"))]
    photos = [p for p in photos if p is not None] or [np.full((720, 1280, 3), 90, np.uint8)]
    frames = []
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = max(1280 / photo.shape[1], 720 / photo.shape[0]) * (1 + 0.05 * (i // 2 % 4))
        big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        y = (big.shape[0] - 720) * (i % 3) // 2
        x = (big.shape[1] - 1280) * (i % 5) // 4
        frame = big[y:y + 720, x:x + 1280]
        if i % 2:
            frame = frame[:, ::-1]
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append(data.tobytes())
    return frames


def resolve_model(name: str) -> tuple[str, str]:
    """(model to use, note): a .pt that cannot be loaded offline becomes its .yaml."""
    from ultralytics import YOLO

    if not name.endswith(".pt"):
        return name, ""
    try:
        YOLO(name)
        return name, ""
    except Exception:
        fallback = name[:-3] + ".yaml"
        return fallback, f"{name} is not on this machine (offline): built {fallback} instead " \
                         "(untrained, same network, no detections)"


# the llmcam path ---------------------------------------------------------------------------------

class MemoryFiles:
    """A session's files, kept in memory (the store's part is not what is measured)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, bytes]] = {}

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        name = f"{PREFIX[kind]}_{len(self._files)}_{safe_stem(stem)}.{ext}"
        self._files[name] = (kind, data)
        return name

    async def read(self, name: str) -> bytes:
        found = self._files.get(file_name(name))
        if found is None:
            raise FileNotFoundError(name)
        return found[1]

    async def list(self, kind: str | None = None) -> list[Any]:
        return [n for n, (k, _) in self._files.items() if kind in (None, k)]


@dataclass
class Run:
    images: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


async def llmcam_path(settings: Settings, frames: list[bytes], sessions: int,
                      per_session: int, warmup: int) -> Run:
    guard = UrlGuard([])
    contexts = []
    for i in range(sessions):
        ctx = ToolContext(f"bench-{i}", settings, Web(guard), MemoryFiles(), None)  # type: ignore[arg-type]
        names = [await ctx.files.save("capture", f"frame{j}", frames[(i + j) % len(frames)],
                                      "jpg") for j in range(per_session + warmup)]
        contexts.append((ctx, names))
    handle = await detector.handle()

    async def session(ctx: ToolContext, names: list[str], timed: bool, out: Run) -> None:
        for name in names:
            started = time.perf_counter()
            await vision.detect_objects(ctx, name)
            if timed:
                out.latencies.append(time.perf_counter() - started)

    warm = Run()
    if warmup:
        await asyncio.gather(*(session(c, n[:warmup], False, warm) for c, n in contexts))
    await handle.reset_stats.remote()  # the replica's figures: the timed part only
    run = Run()
    started = time.perf_counter()
    await asyncio.gather(*(session(c, n[warmup:], True, run) for c, n in contexts))
    run.seconds = time.perf_counter() - started
    run.images = sessions * per_session
    return run


# baselines --------------------------------------------------------------------------------------

def detect_work(result: Any) -> bytes:
    """What llmcam does per image besides detecting: counts and an annotated JPEG."""
    names = result.names
    _ = {names[int(c)] for c in result.boxes.cls.tolist()}
    ok, data = cv2.imencode(".jpg", result.plot(), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def direct_predictor(model_name: str, frames: list[bytes], images: int, batch: int,
                     device: str) -> Run:
    """(a) ultralytics' own predictor, called directly, `batch` frames at a time."""
    from ultralytics import YOLO

    model = YOLO(model_name)
    half = device.startswith("cuda")

    def once(chunk: list[bytes]) -> None:
        arrays = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in chunk]
        for result in model.predict(arrays, imgsz=640, conf=0.25, half=half, device=device,
                                    verbose=False):
            detect_work(result)

    once(frames[:batch])  # warm-up
    run = Run()
    started = time.perf_counter()
    done = 0
    while done < images:
        chunk = [frames[(done + k) % len(frames)] for k in range(min(batch, images - done))]
        t = time.perf_counter()
        once(chunk)
        run.latencies += [time.perf_counter() - t] * len(chunk)  # each waits for its batch
        done += len(chunk)
    run.seconds, run.images = time.perf_counter() - started, done
    return run


def original_pattern(model_name: str, frames: list[bytes], images: int, device: str) -> Run:
    """(b) the original llmcam's detect_objects: YOLO(model) loaded on every call."""
    from ultralytics import YOLO

    run = Run()
    started = time.perf_counter()
    for i in range(images):
        t = time.perf_counter()
        model = YOLO(model_name)
        image = cv2.imdecode(np.frombuffer(frames[i % len(frames)], np.uint8), cv2.IMREAD_COLOR)
        detect_work(model(image, conf=0.25, device=device, verbose=False)[0])
        run.latencies.append(time.perf_counter() - t)
    run.seconds, run.images = time.perf_counter() - started, images
    return run


# report -----------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpus": str(os.cpu_count()), "cpu": cpu_model(platform.processor()
                                                         or platform.machine()),
            "gpu": gpu, "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version()}


def table(rows: list[tuple[str, str, Run]]) -> str:
    lines = ["| path | concurrency | images | images/s | p50 latency (ms) | p99 latency (ms) |",
             "|---|---|---|---|---|---|"]
    for name, concurrency, run in rows:
        lines.append(f"| {name} | {concurrency} | {run.images} | {run.rate:.1f} | "
                     f"{run.pct(50):.0f} | {run.pct(99):.0f} |")
    return "\n".join(lines)


def main() -> None:
    import torch

    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov8s.pt",
                        help="weights or .yaml (a missing .pt falls back to its .yaml)")
    parser.add_argument("--sessions", type=int, default=64 if gpu else 8,
                        help="concurrent sessions")
    parser.add_argument("--frames", type=int, default=100 if gpu else 4,
                        help="720p frames each session sends (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2 if gpu else 1,
                        help="frames per session before timing")
    parser.add_argument("--batch", type=int, default=detector.MAX_BATCH,
                        help="the detector's max batch size (and the direct predictor's)")
    parser.add_argument("--wait-ms", type=float, default=detector.BATCH_WAIT_S * 1000,
                        help="serve.batch wait for a batch to fill")
    parser.add_argument("--gpus", type=float, default=None,
                        help="GPUs per detector replica (default: 1 if the cluster has one)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--original-images", type=int, default=None,
                        help="images for the model-per-call baseline (default: a few)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: local)")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    load_before = os.getloadavg()
    os.environ.update(WORKER_ENV)
    model, note = resolve_model(args.model)
    frames = make_frames(16)
    ray.init(address=args.address or "local", namespace="llmcam", include_dashboard=False,
             runtime_env={"env_vars": WORKER_ENV}, logging_level="WARNING",
             **({} if args.address else {"_node_ip_address": "127.0.0.1"}))
    try:
        settings = Settings(yolo_model=model, detector_gpus=args.gpus,
                            detector_replicas=args.replicas,
                            data=Path(tempfile.mkdtemp(prefix="detect-bench-")))
        t = time.perf_counter()
        detector.deploy(settings, max_batch_size=args.batch,
                        batch_wait_timeout_s=args.wait_ms / 1000)
        ready_s = time.perf_counter() - t
        handle = detector._ready_handle()
        cpu_before = time.process_time()
        path = asyncio.run(llmcam_path(settings, frames, args.sessions, args.frames, args.warmup))
        stats = handle.stats.remote().result()
        busy = stats["busy_s"] / max(path.seconds, 1e-9)
        driver_cpu = time.process_time() - cpu_before
        device = "cuda" if stats["device"].startswith("cuda") else "cpu"
        rows = [(f"llmcam: sessions → Serve detector ({stats['device']}, batched)",
                 f"{args.sessions} sessions, max batch {args.batch}", path)]
        if not args.skip_baselines:
            batch = min(args.batch, args.sessions)
            rows.append((f"(a) ultralytics predictor, direct ({device})", f"batch {batch}",
                         direct_predictor(model, frames, args.sessions * args.frames, batch,
                                          device)))
            count = args.original_images or (50 if device == "cuda" else 6)
            rows.append((f"(b) original: YOLO(model) per call ({device})", "1 (sequential)",
                         original_pattern(model, frames, count, device)))
    finally:
        ray.shutdown()
    load_after = os.getloadavg()

    sizes = stats["batch_sizes"]
    mean_batch = stats["images"] / max(1, stats["batches"])
    info = machine()
    limits = []
    if busy > 0.8:
        limits.append(f"the replica was busy computing {busy:.0%} of the timed run (one "
                      f"batch at a time): the {stats['device']} forward pass and its "
                      "decode/draw/encode bound the figure")
    else:
        limits.append(f"the replica computed only {busy:.0%} of the time: requests arrived "
                      f"too slowly (client side: this process's event loop and Serve's "
                      f"router used {driver_cpu:.1f} s of CPU)")
    if device == "cpu":
        limits.append(f"no GPU here: {info['cpus']} CPU cores run the network in fp32 "
                      "(and share them with the load shown below)")
    text = f"""## Detection throughput (`benchmarks/detect_throughput.py`)

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {info['cpus']} CPU cores ({info['cpu']}), GPU:
{info['gpu']}; Python {info['python']}, torch {info['torch']}, Ray {info['ray']}. Load average
(1/5/15 min) before {'/'.join(f'{v:.1f}' for v in load_before)}, after
{'/'.join(f'{v:.1f}' for v in load_after)}.

Settings: model `{model}`{f' ({note})' if note else ''}; {args.sessions} sessions × {args.frames}
frames of 1280x720 JPEG (after {args.warmup} warm-up frames each); detector max batch
{args.batch}, batch wait {args.wait_ms:g} ms, {args.replicas} replica(s), device
{stats['device']}; the detector was ready {ready_s:.1f} s after `deploy()`.

How: each "session" is an asyncio task in the benchmark process with its own ToolContext
(in-memory files) calling the real `detect_objects` tool (file read, JPEG header check,
Serve handle → detector replica with `@serve.batch`, annotated JPEG saved back); the chat
loop and the LLM stand-in are left out. Latency is per `detect_objects` call. (a) and (b) run
in the benchmark process on the same frames and do the same work per image (decode, detect,
draw, JPEG encode); in (a) an image's latency is its batch's time.

{table(rows)}

Batches the replica formed in the timed part (size: count): {sizes}; mean
{mean_batch:.1f} images per batch.

What limits the figure: {'; '.join(limits)}.
"""
    publish(text.strip() + "\n", RESULTS, MARK, write=not args.no_write)
    if not args.no_write:
        print(f"(written to {RESULTS})")


if __name__ == "__main__":
    main()
