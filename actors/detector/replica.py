"""The detector's replica: YOLO on the device Ray assigned, behind a `@serve.batch` batcher.

Every replica asks Ray for `detector_gpus` GPUs (0 on a CPU-only cluster: same code), loads the
model once, and batches the requests of all sessions: one decode, one letterbox, one forward
pass and one NMS per batch. Sessions send JPEG bytes (nodes share no disks) and get back counts
per class and an annotated JPEG. torch, ultralytics and OpenCV are imported inside the replica
(in `Detector.__init__` and its methods), never at the top: client.py imports this module to
deploy it.

Over 300 lines: one batch's whole path on one device (decode, letterbox, forward, NMS,
results) is one class, so that where each tensor lives and in which dtype is read in one
place; the drawing is draw.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from typing import Any

import ray
from ray import serve

from actors._ray import release_memory
from actors.detector.draw import PALETTE, LabelSprites, draw

DEPLOYMENT = "Detector"
MAX_BATCH = 32
BATCH_WAIT_S = 0.01
CONCURRENT_BATCHES = 2
IMGSZ = 640
IOU = 0.7  # ultralytics' predict default
MAX_DET = 300
MAX_PIXELS = 50_000_000


class DetectionError(ValueError):
    """One image of a batch could not be used (not an image, too large); the others go on."""


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=CONCURRENT_BATCHES * MAX_BATCH,
                  health_check_period_s=10, graceful_shutdown_timeout_s=5)
class Detector:
    """One replica: the model on its device, and a batcher in front of it."""

    def __init__(self, model: str, imgsz: int = IMGSZ, cpu_threads: int | None = None,
                 fingerprint: str = "") -> None:
        _keep_replica_port_on_node_address()
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "False")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        import torch
        from ultralytics import YOLO
        from ultralytics import settings as yolo_settings

        yolo_settings.update({"sync": False})
        self._torch = torch
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self._device = torch.device("cuda" if gpu_ids else "cpu")
        self._dtype = torch.float16 if self._device.type == "cuda" else torch.float32
        if self._device.type == "cpu":
            torch.set_num_threads(max(1, cpu_threads or (os.cpu_count() or 1)))
        try:
            yolo = YOLO(model)
        except Exception as exc:  # weights missing offline, bad name: say so, do not hang
            raise RuntimeError(f"cannot load YOLO model {model!r}: {exc}. Put the weights "
                               "on every node or set LLMCAM_YOLO_MODEL") from None
        net = yolo.model
        if hasattr(net, "fuse"):
            try:
                net = net.fuse(verbose=False)
            except TypeError:
                net = net.fuse()
        self._net = net.to(self._device).eval()
        if self._dtype == torch.float16:
            self._net = self._net.half()
        for parameter in self._net.parameters():
            parameter.requires_grad_(False)
        self._names: dict[int, str] = {int(k): str(v) for k, v in yolo.names.items()}
        self._end2end = bool(getattr(self._net.model[-1], "end2end", False)) \
            if hasattr(self._net, "model") else False
        self._model_name = model
        self._stride = max(32, int(getattr(self._net, "stride", torch.tensor([32])).max()))
        self._fingerprint = fingerprint
        self._imgsz = imgsz
        self._palette = torch.tensor([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in PALETTE],
                                     dtype=torch.uint8, device=self._device)
        self._labels = LabelSprites(self._names, self._palette, self._device)
        # the CPU path runs one batch at a time (two would only split the same cores)
        self._cpu_lock = threading.Lock() if self._device.type == "cpu" \
            else contextlib.nullcontext()
        self._batch_sizes: Counter[int] = Counter()
        self._busy_s = 0.0
        with torch.inference_mode():  # the first pass allocates; do it before traffic
            self._net(torch.zeros(1, 3, imgsz, imgsz, dtype=self._dtype, device=self._device))

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch tuning through `user_config`, without restarting the replica."""
        self._detect_batch.set_max_batch_size(int(config.get("max_batch_size", MAX_BATCH)))
        self._detect_batch.set_batch_wait_timeout_s(
            float(config.get("batch_wait_timeout_s", BATCH_WAIT_S)))

    async def detect(self, image: bytes, conf: float = 0.25) -> dict[str, Any]:
        """Counts per class, boxes, and the annotated image (JPEG) of one image (JPEG bytes)."""
        result = await self._detect_batch(image, float(conf))
        if isinstance(result, Exception):
            raise result
        return result

    # Two batches may be in flight: on a GPU one batch's host work (decode calls, drawing,
    # results) overlaps the other's kernels; on the CPU `_run` takes a lock, one at a time.
    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S,
                 max_concurrent_batches=CONCURRENT_BATCHES)
    async def _detect_batch(self, images: list[bytes],
                            confs: list[float]) -> list[dict[str, Any] | Exception]:
        self._batch_sizes[len(images)] += 1
        # off the event loop, so the next batch fills while this one runs
        return await asyncio.to_thread(self._run, images, confs)

    def stats(self) -> dict[str, Any]:
        """What this replica has done: the batch sizes it formed, and where it runs."""
        return {"device": str(self._device), "model": self._model_name,
                "fingerprint": self._fingerprint,
                "batch_sizes": dict(sorted(self._batch_sizes.items())),
                "batches": sum(self._batch_sizes.values()),
                "images": sum(n * c for n, c in self._batch_sizes.items()),
                "busy_s": round(self._busy_s, 3), "pid": os.getpid(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else [],
                "max_batch_size": self._detect_batch._get_max_batch_size()}

    def reset_stats(self) -> None:
        self._batch_sizes.clear()
        self._busy_s = 0.0

    # the batch, in a worker thread ----------------------------------------------------------
    def _run(self, images: list[bytes], confs: list[float]) -> list[dict[str, Any] | Exception]:
        torch = self._torch
        with self._cpu_lock, torch.inference_mode():
            started = time.perf_counter()
            try:
                return self._run_batch(images, confs)
            finally:
                # Batches of changing sizes leave glibc's arenas holding freed tensors: measured
                # here, 120 batches of 1-6 images of 12 sizes grew the replica's USS by 470 MB
                # without this and by 19 MB with it (a 30-minute soak: +425 MB, +266 MB/h).
                release_memory(collect=False)
                self._busy_s += time.perf_counter() - started

    def _run_batch(self, images: list[bytes],
                   confs: list[float]) -> list[dict[str, Any] | Exception]:
        """Decode, letterbox, one forward pass, NMS, draw, encode: the whole batch at once."""
        torch = self._torch
        decoded = self._decode(images)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        results: list[dict[str, Any] | Exception] = list(decoded)  # errors stay in place
        if not good:
            return results
        frames = [decoded[i] for i in good]
        batch, scale = self._letterbox(frames)
        out = self._net(batch)
        preds = out[0] if isinstance(out, (list, tuple)) else out
        conf = torch.tensor([max(0.001, confs[i]) for i in good], device=self._device)
        found = self._postprocess(preds, conf, scale)
        drawn = [draw(frame, boxes, classes, self._palette, self._labels)
                 for frame, (boxes, _, classes) in zip(frames, found, strict=True)]
        jpegs = self._encode(drawn)
        for i, frame, (boxes, scores, classes), jpeg in zip(good, frames, found, jpegs,
                                                              strict=True):
            results[i] = self._result(frame, boxes, scores, classes, jpeg)
        return results

    def _decode(self, images: list[bytes]) -> list[Any]:
        """Decode on the device (nvJPEG on a GPU, batched); bad items become errors."""
        torch = self._torch
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        out: list[Any] = [None] * len(images)
        jpegs: list[int] = []
        for i, data in enumerate(images):
            try:
                kind, width, height = _image_header(data)
                if width * height > MAX_PIXELS:
                    raise DetectionError(f"the image is {width}x{height} pixels; at most "
                                         f"{MAX_PIXELS // 1_000_000} megapixels are accepted")
                buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                if kind == "JPEG":
                    out[i] = buffer
                    jpegs.append(i)
                else:  # other formats: decoded on the CPU, then moved
                    out[i] = decode_image(buffer, mode=ImageReadMode.RGB).to(self._device)
            except DetectionError as exc:
                out[i] = exc
            except Exception:
                out[i] = DetectionError("the data is not an image that can be decoded")
        if jpegs:
            try:
                frames = decode_jpeg([out[i] for i in jpegs], mode=ImageReadMode.RGB,
                                     device=self._device)
                for i, frame in zip(jpegs, frames, strict=True):
                    out[i] = frame
            except Exception:  # one bad JPEG fails a batched decode: decode one by one
                for i in jpegs:
                    try:
                        out[i] = decode_jpeg(out[i], mode=ImageReadMode.RGB,
                                             device=self._device)
                    except Exception:
                        out[i] = DetectionError("the JPEG data is corrupt or truncated")
        return out

    def _letterbox(self, frames: list[Any]) -> tuple[Any, Any]:
        """Frames of any sizes -> one batch: each resized to fit `imgsz`, centred on grey in the
        smallest stride-aligned rectangle that holds them all (as ultralytics' rect LetterBox:
        384x640 for 16:9 frames, not 640x640). Frames of one size are resized together."""
        torch = self._torch
        import torch.nn.functional as functional

        size, stride = self._imgsz, self._stride
        fitted = []
        for frame in frames:
            height, width = int(frame.shape[1]), int(frame.shape[2])
            ratio = min(size / height, size / width)
            fitted.append((height, width, ratio, max(1, round(height * ratio)),
                           max(1, round(width * ratio))))
        batch_h = -(-max(f[3] for f in fitted) // stride) * stride
        batch_w = -(-max(f[4] for f in fitted) // stride) * stride
        batch = torch.full((len(frames), 3, batch_h, batch_w), 114 / 255, dtype=self._dtype,
                           device=self._device)
        scale = torch.zeros((len(frames), 3), dtype=torch.float32, device=self._device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (height, width, *_rest) in enumerate(fitted):
            groups.setdefault((height, width), []).append(i)
        for members in groups.values():
            height, width, ratio, new_h, new_w = fitted[members[0]]
            top, left = (batch_h - new_h) // 2, (batch_w - new_w) // 2
            x = torch.stack([frames[i] for i in members]).to(self._dtype).div_(255)
            if (new_h, new_w) != (height, width):
                x = functional.interpolate(x, size=(new_h, new_w), mode="bilinear",
                                           align_corners=False)
            index = torch.tensor(members, device=self._device)
            batch[index, :, top:top + new_h, left:left + new_w] = x
            scale[index] = torch.tensor([ratio, left, top], device=self._device)
        return batch, scale

    def _postprocess(self, preds: Any, conf: Any, scale: Any) -> list[tuple[Any, Any, Any]]:
        """Boxes in each frame's own pixels: confidence filter, then one NMS for the whole
        batch (torchvision's batched_nms, offsets by image and class; no time limit)."""
        torch = self._torch
        from torchvision.ops import batched_nms

        count = preds.shape[0]
        if self._end2end:  # (B, max_det, 6): x1 y1 x2 y2 score class, NMS-free heads
            scores, classes = preds[..., 4].float(), preds[..., 5].long()
            image, anchor = (scores > conf[:, None]).nonzero(as_tuple=True)
            boxes = preds[image, anchor, :4].float()
            scores, classes = scores[image, anchor], classes[image, anchor]
        else:  # (B, 4 + classes, anchors): cx cy w h, then class scores
            classes_n = preds.shape[1] - 4
            p = preds.transpose(1, 2)
            best, best_class = p[..., 4:].max(-1)
            image, anchor = (best > conf[:, None]).nonzero(as_tuple=True)
            xywh = p[image, anchor, :4].float()
            boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            scores, classes = best[image, anchor].float(), best_class[image, anchor]
            if boxes.numel():
                keep = batched_nms(boxes, scores, image * classes_n + classes, IOU)
                image, boxes, scores, classes = image[keep], boxes[keep], scores[keep], \
                    classes[keep]
        ratio, left, top = scale[image, 0:1], scale[image, 1:2], scale[image, 2:3]
        boxes = (boxes - torch.cat([left, top, left, top], 1)) / ratio
        # grouped by image, best first within each: two sorts and one sync, not one per image
        order = scores.argsort(descending=True)
        order = order[image[order].argsort(stable=True)]
        counts = torch.bincount(image, minlength=count).tolist()
        found = []
        for mine in order.split(counts):
            mine = mine[:MAX_DET]
            found.append((boxes[mine], scores[mine], classes[mine]))
        return found

    def _encode(self, frames: list[Any]) -> list[bytes]:
        from torchvision.io import encode_jpeg

        try:
            encoded = encode_jpeg(frames, quality=85)  # nvJPEG on a GPU, batched
        except Exception:  # some builds encode on the CPU only
            encoded = encode_jpeg([f.cpu() for f in frames], quality=85)
        return [e.cpu().numpy().tobytes() for e in encoded]

    def _result(self, frame: Any, boxes: Any, scores: Any, classes: Any,
                jpeg: bytes) -> dict[str, Any]:
        names = [self._names.get(int(c), str(int(c))) for c in classes.tolist()]
        detections = [{"class": name, "confidence": round(score, 3),
                       "box": [round(v, 1) for v in box]}
                      for name, score, box in zip(names, scores.tolist(), boxes.tolist(),
                                                  strict=True)]
        return {"counts": dict(Counter(names).most_common()), "detections": detections,
                "width": int(frame.shape[2]), "height": int(frame.shape[1]), "image": jpeg}


def _image_header(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone (PIL reads no pixels here)."""
    import io

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the caller checks the size, with a clearer message
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG", "WEBP", "GIF"]) as image:
            return image.format or "", image.size[0], image.size[1]
    except Exception:
        raise DetectionError("the data is not an image") from None


def _keep_replica_port_on_node_address() -> None:
    """Ray Serve 2.60 starts, in every replica once its constructor has run, an unauthenticated
    gRPC server for inter-deployment calls that unpickles what it is sent, and binds it to
    every interface (`[::]:0`, no setting for the host: ray-project/ray#64544 asks for a port
    range only). On a laptop that is remote code execution for anyone on the same network.
    Our handles do not use that transport (`RAY_SERVE_USE_GRPC_BY_DEFAULT` is off), so the
    replica binds it to its node's Ray address instead, the address every other Ray server of
    the node listens on (loopback for the embedded Ray). tests/test_cli.py checks that no
    process of an embedded server listens beyond loopback after a detection."""
    if not ray.is_initialized():
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "llmcam_node_address", False):
        return
    node_ip = ray.util.get_node_ip_address()
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def on_node_address(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return bind(server, address)

    on_node_address.llmcam_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_node_address
