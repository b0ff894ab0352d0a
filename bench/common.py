"""What the benchmarks share: where they write, the Labeled PSB sample, timing, results
files, sub-benchmarks in their own process, and memory sampling of this process tree."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import psutil

if TYPE_CHECKING:
    from distill.records import KnowledgeUnits, Shape

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PSB = os.environ.get("PSB_PATH", str(ROOT.parent / "shared" / "data" / "labeled_psb"))
"""The Labeled PSB sample: ``$PSB_PATH``, else where this checkout keeps it."""


# -- data --------------------------------------------------------------------------------


def load_psb(per_category: int = 0, categories: list[str] | None = None) -> list[Shape]:
    """The Labeled PSB shapes (``per_category`` of each, 0: all; ``categories``, default all)."""
    from distill.config import DataConfig
    from distill.readers import iter_items

    data = DataConfig(source="psb", path=PSB, per_category=per_category, categories=categories or [])
    return [item.load() for item in iter_items(data, seed=0)]


def truth_units(shape: Shape) -> KnowledgeUnits:
    """Perfect knowledge: one unit per part present in ``shape``, exactly its points, score 1."""
    from distill.records import KnowledgeUnits

    if shape.labels is None:
        raise ValueError(f"{shape.shape_id} has no labels: ground-truth units need labelled shapes")
    parts = [p for p in range(shape.num_parts) if (shape.labels == p).any()]
    sets = [np.flatnonzero(shape.labels == p) for p in parts]
    return KnowledgeUnits.from_lists(shape.shape_id, [0] * len(parts), parts, [1.0] * len(parts), sets, teacher="truth")


# -- timing and results ------------------------------------------------------------------


class Timed(NamedTuple):
    """The last call's result and the median CPU and wall seconds of the calls."""

    result: Any
    cpu_s: float
    wall_s: float


def timed(fn: Callable[[], Any], repeats: int = 1) -> Timed:
    """Call ``fn`` ``repeats`` times: its last result, median CPU seconds (this process's:
    steady on a shared machine, where a descheduled thread adds wall time but no CPU time)
    and median wall seconds."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return Timed(out, float(np.median(cpu)), float(np.median(wall)))


def peak_rss_mib() -> float:
    """This process's peak RSS so far, MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(name: str, section: str, value: object, key: str | None = None) -> None:
    """Merge ``value`` into ``bench/results/<name>.json``, as ``[section][key]`` (the
    section's other keys kept) or, without ``key``, as the whole ``[section]``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if key is None:
        data[section] = value
    else:
        data.setdefault(section, {})[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_module(module: str, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` in a process of its own, from the repository root,
    its output captured as text (``kwargs``: ``subprocess.run``'s)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


# -- memory ------------------------------------------------------------------------------

RAY_WORKER_MARKERS = ("ray::", "default_worker.py")


def is_ray_worker(cmd: str) -> bool:
    """A Ray worker process (task, actor, Ray Train worker, idle worker) by its command line."""
    return any(m in cmd for m in RAY_WORKER_MARKERS)


@dataclass(frozen=True)
class Proc:
    """One process in a sample: its command line, memory (bytes) and CPU seconds so far."""

    pid: int
    cmd: str
    memory: int
    cpu_s: float


class ProcessSampler(threading.Thread):
    """A thread that samples this process and its descendants every ``interval`` seconds
    until ``stop()``: a local Ray's GCS, raylet and workers are among the descendants,
    another program's processes (its Ray included) never are. What a sample keeps is a
    subclass's ``record``; ``read`` gives a process's ``memory`` figure (``uss``: pages the
    process alone maps; ``pss``: shared pages split among their users; ``rss``: all it maps)
    and CPU time, ``store_bytes`` the Ray object store in use (with ``ray_store``)."""

    def __init__(self, interval: float = 1.0, memory: str = "uss", ray_store: bool = False) -> None:
        super().__init__(daemon=True)
        if memory not in ("uss", "pss", "rss"):
            raise ValueError(f"memory={memory!r}: uss, pss or rss")
        self.interval, self.memory, self.ray_store = interval, memory, ray_store
        self.me = psutil.Process()
        self.lock = threading.RLock()  # one sample at a time (a caller may sample too)
        self.stop_event = threading.Event()

    def record(self) -> None:
        """Take one sample (subclasses)."""
        raise NotImplementedError

    def sample(self) -> None:
        with self.lock:
            self.record()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        self.join(timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            return self.me.children(recursive=True)
        except psutil.Error:
            return []

    def read(self, p: psutil.Process, keep: Callable[[str], bool] | None = None) -> Proc | None:
        """``p``'s figures; None when it is gone, or when ``keep`` refuses its command line
        (its memory is then not read: ``uss`` and ``pss`` cost a walk of its page map)."""
        try:
            with p.oneshot():
                cmd = " ".join(p.cmdline())
                if keep is not None and not keep(cmd):
                    return None
                info = p.memory_info() if self.memory == "rss" else p.memory_full_info()
                t = p.cpu_times()
        except psutil.Error:
            return None
        return Proc(p.pid, cmd, getattr(info, self.memory), t.user + t.system)

    def store_bytes(self) -> float:
        """Bytes of the Ray object store in use (0 without ``ray_store``)."""
        if not self.ray_store:
            return 0.0
        import ray

        total = ray.cluster_resources().get("object_store_memory", 0.0)
        return total - ray.available_resources().get("object_store_memory", total)
