"""Small process helpers shared by the actors."""

from __future__ import annotations

import ctypes
import gc


def release_memory(collect: bool = True) -> None:
    """Hand freed heap back to the OS (after start-up: hundreds of these actors share a node;
    after a detector batch: see actors/detector/replica.py)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
