"""Machine and worker status for GET /sdapi/v1/memory (A1111's shape) and GET /api/workers."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from anima.server.schemas import WorkerOut, WorkersOut


def workers_out(worker, store) -> WorkersOut:
    """`worker`: the app's `Worker` or `RayWorkers`."""
    items = [WorkerOut(**dataclasses.asdict(w)) for w in worker.workers()]
    mode = "ray" if any(w.kind == "ray" for w in items) else "local"
    return WorkersOut(mode=mode, workers=items, queued=store.count("queued"), running=store.count("running"))


def memory(worker, store) -> dict[str, Any]:
    """A1111's /sdapi/v1/memory: `ram` and `cuda` of the server's machine (bytes), plus the
    workers (`anima_workers`, an addition A1111 clients ignore): with Ray, models live there."""
    return {
        "ram": _ram(),
        "cuda": _cuda(),
        "anima_workers": workers_out(worker, store).model_dump(),
    }


def _ram() -> dict[str, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return {"free": 0, "used": 0, "total": 0}
    return {"free": free, "used": total - free, "total": total}


def _cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "no CUDA device in the server process"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
