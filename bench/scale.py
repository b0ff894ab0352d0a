"""Memory and start-up as the corpus grows: the training side of the streaming data path.

    python -m bench.scale --sizes 2000 20000            # ~15 min on 2 cores
    python -m bench.scale --sizes 300 3000 --backends local ray

For each corpus size, a synthetic corpus is written with the real schemas (shape parts of
``cluster.part_shapes`` shapes, 256 points each, one category a part, with manifests;
co-partitioned round-0 knowledge with ~12 units a shape from a fast synthetic writer),
then the training stage runs on it — a fit, a backward-distillation re-scoring pass over
every unit, and a second fit — on

* ``ray``: a multi-node cluster made on this machine (``ray.cluster_utils.Cluster``: a
  head with no CPUs for tasks, two logical worker nodes of one CPU each, object stores
  capped at 256 MB with spilling on), two Ray Train workers fed by Ray Data;
* ``local``: this process alone (``cluster.training.train.train_local``).

A sampler thread records every second the USS (unique set size: pages shared with other
processes are not counted) of the driver and of every other process of the cluster, and
the object store's use. Per size and backend it reports: the driver's and the largest
worker's peak USS, the object store's peak and the bytes spilled, the fit start-up (fit
call → first training batch, from the workers' wall clock) and the training throughput
(shapes/s over both fits' training loops). The last line is one JSON object with the
ratios of the largest size's figures over the smallest's (``*_ratio``), for the Ray
backend (the local backend's under ``local``).

What it does not cover: extraction (rendering + teacher) at these sizes — its memory is
bounded by one shape part per actor by construction and is measured by
``bench/scaling.py`` at 300–600 real shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from bench.common import ProcessSampler, is_ray_worker
from cluster.config import load_config
from cluster.store.layout import knowledge_part_name, shape_summary
from cluster.store.storage import Storage
from distill.records import KnowledgeUnits, Shape, shapes_to_table, units_to_table

CATEGORIES = {"Mug": ["body", "handle"], "Lamp": ["base", "pole", "shade"]}
POINTS = 256


def write_corpus(storage: Storage, run: str, size: int, part_shapes: int, seed: int = 0) -> None:
    """``size`` synthetic shapes and their round-0 knowledge, in the run's layout."""
    rng = np.random.default_rng(seed)
    n = 0
    cats = list(CATEGORIES.items())
    while n < size:
        cat, parts = cats[(n // part_shapes) % len(cats)]
        count = min(part_shapes, size - n)
        shapes, units = [], []
        for i in range(count):
            sid = f"{cat}/{n + i:07d}"
            labels = rng.integers(0, len(parts), POINTS)
            pts = rng.normal(0, 0.3, (POINTS, 3)).astype(np.float32) + labels[:, None] * 0.2
            pts /= np.linalg.norm(pts, axis=1).max()
            shapes.append(Shape(sid, cat, parts, pts, labels=labels, source="synthetic"))
            views, labs, scores, sets = [], [], [], []
            for k in range(12):
                lab = int(rng.integers(0, len(parts)))
                cover = np.flatnonzero(labels == lab)
                sets.append(np.sort(rng.choice(cover, max(1, len(cover) // 2), replace=False)))
                views.append(k % 10)
                labs.append(lab)
                scores.append(float(rng.uniform(0.5, 0.95)))
            units.append(KnowledgeUnits.from_lists(sid, views, labs, scores, sets, teacher="synthetic"))
        name = f"part-{n // part_shapes:06d}.parquet"
        storage.write_part(
            f"{run}/shapes", shapes_to_table(shapes), [s.shape_id for s in shapes], name, shape_summary(shapes)
        )
        ids = [s.shape_id for s in shapes]
        summary = {"shape_part": name, "with_units": {cat: count}, "units": 12 * count}
        storage.write_part(
            f"{run}/knowledge/round_0", units_to_table(units), ids, knowledge_part_name(name, ids), summary
        )
        n += count
    storage.manifest(f"{run}/shapes")
    storage.manifest(f"{run}/knowledge/round_0")


class Sampler(ProcessSampler):
    """Peak USS of this process and of every Ray worker process it started (its
    descendants: another program's Ray on the machine is never counted), and the object
    store's peak use, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 1.0, ray_store: bool = False) -> None:
        super().__init__(interval, "uss", ray_store)
        self.driver_peak = 0
        self.worker_peak: dict[int, tuple[str, int]] = {}
        self.store_peak = 0.0

    def record(self) -> None:
        me = self.read(self.me)
        if me is not None:
            self.driver_peak = max(self.driver_peak, me.memory)
        for p in self.descendants():  # this run's Ray only, never another's
            w = self.read(p, keep=is_ray_worker)
            if w is None:
                continue
            name = w.cmd.split()[0] if w.cmd else str(w.pid)
            old = self.worker_peak.get(w.pid, (name, 0))
            self.worker_peak[w.pid] = (name if "ray::" in name else old[0], max(old[1], w.memory))
        self.store_peak = max(self.store_peak, self.store_bytes())


def spilled_bytes() -> int:
    """Bytes Ray spilled to disk so far (from its memory summary)."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    for line in text.splitlines():
        if line.strip().startswith("Spilled"):
            return int(float(line.split()[1]) * 2**20)
    return 0


def run_training(backend: str, root: str, run: str, size: int) -> dict[str, Any]:
    cfg = load_config(
        [
            f"run={run}",
            f"storage.root={root}",
            "progress=false",
            f"data.num_points={POINTS}",
            "student.width=8",
            "student.k=8",
            "train.epochs=2",
            "train.batch_size=32",
            "train.bd_rounds=1",
            "train.bd_trigger=epoch",
            "train.bd_epoch=1",
            "train.augment=false",
            "cluster.train_workers=2",
            "cluster.rescore_actors=2",
            f"cluster.backend={backend}",
        ]
    )
    storage = Storage.from_config(cfg.storage)
    sampler = Sampler(ray_store=backend == "ray")
    sampler.start()
    start = time.time()
    if backend == "ray":
        from cluster.training.train_ray import train_on_ray

        fit_calls: list[float] = []
        import cluster.training.train_ray as tr

        original = tr.fit_on_ray

        def timed_fit(*a: Any, **k: Any) -> Any:
            fit_calls.append(time.time())
            return original(*a, **k)

        tr.fit_on_ray = timed_fit  # looked up at each call by train_student_on_ray
        try:
            out = train_on_ray(cfg, storage, f"{run}/shapes", f"{run}/knowledge/round_0")
        finally:
            tr.fit_on_ray = original
        startup = [fit_calls[0]]
    else:
        from cluster.training.train import train_local

        out = train_local(cfg, storage, f"{run}/shapes", f"{run}/knowledge/round_0")
        startup = [start]
    sampler.stop()
    (student,) = out["students"]
    history_first = student.get("first_batch_at")
    info = storage.read_json(f"{run}/checkpoints/all/train_info.json") if backend == "ray" else student
    first = info.get("first_batch_at") or history_first
    bundle_hist = _history(storage, run)
    seconds = sum(h["seconds"] for h in bundle_hist)
    shapes = sum(h["shapes_per_s"] * h["seconds"] for h in bundle_hist)
    workers = sorted(sampler.worker_peak.values(), key=lambda x: -x[1])
    row = {
        "backend": backend,
        "size": size,
        "driver_peak_mib": sampler.driver_peak / 2**20,
        "worker_peak_mib": workers[0][1] / 2**20 if workers else 0.0,
        "worker_peak_process": workers[0][0] if workers else "",
        "store_peak_mib": sampler.store_peak / 2**20,
        "spilled_mib": spilled_bytes() / 2**20 if backend == "ray" else 0.0,
        "startup_s": (bundle_hist[0]["first_batch_at"] - startup[0]) if bundle_hist else float("nan"),
        "throughput": shapes / seconds if seconds else 0.0,
        "wall_s": time.time() - start,
        "first_batch_at_last_fit": first,
    }
    return row


def _history(storage: Storage, run: str) -> list[dict[str, Any]]:
    from cluster.training.checkpoints import load_torch

    return load_torch(storage, f"{run}/checkpoints/all/final.pt")["history"]


def start_cluster(store_mib: int = 256) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    from cluster.runtime.connect import local_worker_soft_limit, loopback_only

    loopback_only()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": store_mib * 2**20,
            "node_ip_address": "127.0.0.1",
            # One-CPU nodes would keep one idle worker each (Ray's default soft limit is the
            # node's CPUs) and kill the zero-CPU data tasks' workers as soon as they idle, so
            # every shape part would pay a new process and torch's import. Real nodes have
            # 16-48 CPUs; a local Ray gets the same limit (cluster.runtime.connect.local_worker_soft_limit).
            "_system_config": {"num_workers_soft_limit": local_worker_soft_limit(2)},
        },
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=store_mib * 2**20, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, logging_level="WARNING")
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--backends", nargs="+", default=["ray", "local"], choices=["ray", "local"])
    ap.add_argument("--part-shapes", type=int, default=256)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="partdistill-scale-") as root:
        storage = Storage(root)
        for size in a.sizes:
            t = time.time()
            write_corpus(storage, f"c{size}", size, a.part_shapes)
            print(f"corpus of {size} shapes written in {time.time() - t:.1f} s", flush=True)
        cluster = None
        for backend in a.backends:
            if backend == "ray" and cluster is None:
                cluster = start_cluster()
            for size in a.sizes:
                run = f"{backend}{size}"
                for sub in ("shapes", "knowledge/round_0"):
                    # each backend trains on a copy-free view: the same parts under its own run
                    src = storage.path(f"c{size}", sub)
                    dst = storage.path(run, sub)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    if not os.path.exists(dst):
                        os.symlink(src, dst)
                row = run_training(backend, root, run, size)
                rows.append(row)
                print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
    print(
        "\n| backend | shapes | driver peak USS (MiB) | largest worker peak USS (MiB) | object store peak (MiB) "
        "| spilled (MiB) | fit start-up (s) | training shapes/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['size']} | {r['driver_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} | "
            f"{r['store_peak_mib']:.0f} | {r['spilled_mib']:.0f} | {r['startup_s']:.1f} | {r['throughput']:.0f} |"
        )

    def ratios(backend: str) -> dict[str, float]:
        mine = [r for r in rows if r["backend"] == backend]
        if len(mine) < 2:
            return {}
        lo, hi = min(mine, key=lambda r: r["size"]), max(mine, key=lambda r: r["size"])
        return {
            "driver_peak_ratio": round(hi["driver_peak_mib"] / lo["driver_peak_mib"], 3),
            "worker_peak_ratio": round(hi["worker_peak_mib"] / max(lo["worker_peak_mib"], 1e-9), 3),
            "startup_ratio": round(hi["startup_s"] / lo["startup_s"], 3),
            "throughput_ratio": round(hi["throughput"] / lo["throughput"], 3),
        }

    main_backend = "ray" if "ray" in a.backends else a.backends[0]
    summary = {"sizes": sorted(set(a.sizes)), "backend": main_backend, **ratios(main_backend)}
    if main_backend == "ray" and "local" in a.backends:
        summary["local"] = ratios("local")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
