"""The whole pipeline at scale: ``jobs/pretrain.py`` on a small and a 10× larger corpus.

    python -m bench.scale_e2e --sizes 5000 50000 --backend ray     # ~32 min on 2 cores
    python -m bench.scale_e2e --sizes 5000 50000 --backend local   # ~27 min
    python -m bench.scale_e2e --sizes 200 2000 --backend local       # a quick look

For each size, in one invocation and the same way:

* **inputs**: ``size`` shapes, 99 % procedural (8 categories) and 1 % corrupt files in a
  ``files`` folder (truncated STL and PLY, NaN vertices, empty files, random bytes, text),
  read together as one ``data.source=mix``;
* **the job users run**: ``jobs/pretrain.py`` as a subprocess, ``python -m jobs.pretrain``
  (ingest → extract → voting baselines → train 2 epochs with a re-scoring round after the
  first → evaluate on 64 held-out shapes), with small settings (512 points, 64² renders, a width-8 student, no augmentation);
  ``--backend ray``: on a multi-node cluster made here (``ray.cluster_utils.Cluster``: a
  head with no CPUs for tasks and two one-CPU worker nodes, object stores capped at
  ``--store-mib`` with spilling on), the job joining it through ``RAY_ADDRESS``;
* **faults** (unless ``--no-kill``): the driver is killed (SIGKILL) once during extraction
  (when the knowledge pieces written number half the shape parts; a shape part is written
  in about two pieces, so a quarter to a half of the shapes are done) and once half-way
  through the second epoch; the same command is re-run after each kill and finishes the
  run.

A sampler records every second the USS of the driver (the job's process) and of every Ray
worker process of this benchmark's cluster, the largest Ray system process (GCS, raylet),
and the object store's use; stages are cut from the job's ``stage <name> started/done``
log lines, so each stage gets its own peaks. After the run it checks, from the tables:
every corrupt input is in ``rejects/`` with a reason; ingested = inputs − rejected and
extracted + rejected at extraction = ingested; no shape has two knowledge rows and the
knowledge parts written before the kill are untouched; the training history holds each
epoch once, the first from before the kill.

Per size and stage it reports wall seconds (over every invocation, lost work included),
ms a shape, and peak USS of driver and largest worker; the last line is one JSON object
with the largest size's figures over the smallest's (``*_ratio``) and the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import ROOT, ProcessSampler, is_ray_worker
from bench.scale import spilled_bytes, start_cluster
from cluster.store.rejects import read_rejects
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_torch

CATEGORIES = ["Airplane", "Car", "Chair", "Guitar", "Lamp", "Rocket", "Skateboard", "Table"]
STAGES = ["ingest", "extract", "baselines", "train", "evaluate"]
SETTINGS = [
    "data.num_points=512",
    "render.image_size=64",
    "student.width=8",
    "student.k=8",
    "train.augment=false",
    "train.epochs=2",
    "train.batch_size=32",
    "train.bd_rounds=1",
    "train.bd_trigger=epoch",
    "train.bd_epoch=1",
    "eval.data.per_category=8",
    "progress=false",
]
CORRUPT_KINDS = ("truncated_stl", "truncated_ply", "nan_obj", "empty_off", "random_obj", "text_ply")


# -- inputs ---------------------------------------------------------------------------


def write_corrupt_files(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` unreadable mesh files, one kind after another, in category folders;
    returns their paths (ingest's rejects name the file)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        kind = CORRUPT_KINDS[i % len(CORRUPT_KINDS)]
        category = CATEGORIES[i % len(CATEGORIES)].lower()
        (folder / category).mkdir(parents=True, exist_ok=True)
        stem = f"bad{i:06d}_{kind}"
        ext = {
            "truncated_stl": ".stl",
            "truncated_ply": ".ply",
            "nan_obj": ".obj",
            "empty_off": ".off",
            "random_obj": ".obj",
            "text_ply": ".ply",
        }[kind]
        path = folder / category / (stem + ext)
        path.write_bytes(_corrupt_bytes(kind, rng))
        paths.append(str(path))
    return paths


def _corrupt_bytes(kind: str, rng: np.random.Generator) -> bytes:
    v = rng.random((50, 3)).astype("<f4")
    f = rng.integers(0, 50, (80, 3)).astype("<i4")
    if kind == "truncated_stl":
        tri = rng.random((80, 3, 3)).astype("<f4")
        body = b"".join(np.zeros(3, "<f4").tobytes() + t.tobytes() + b"\0\0" for t in tri)
        data = b"\0" * 80 + struct.pack("<I", 80) + body
        return data[: len(data) // 3]
    if kind == "truncated_ply":
        header = (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 50\nproperty float x\nproperty float y\n"
            b"property float z\nelement face 80\nproperty list uchar int vertex_indices\nend_header\n"
        )
        body = v.tobytes() + b"".join(b"\x03" + t.tobytes() for t in f)
        return header + body[: len(body) // 4]
    if kind == "nan_obj":
        lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
        lines[3] = "v nan 0.5 0.5"
        return ("\n".join(lines) + "\n").encode()
    if kind == "empty_off":
        return b""
    if kind == "random_obj":
        return rng.bytes(4000)
    return b"this is not a mesh\n"


# -- sampling -------------------------------------------------------------------------


class Sampler(ProcessSampler):
    """Every ``interval`` s, a row: (time, driver USS, largest Ray worker USS and its name,
    largest Ray system process USS, object store bytes in use). Only this benchmark's
    descendants are looked at, never another program's Ray."""

    def __init__(self, ray_store: bool, interval: float = 1.0) -> None:
        super().__init__(interval, "uss", ray_store)
        self.driver: psutil.Process | None = None
        self.rows: list[tuple[float, int, int, str, int, float]] = []

    def record(self) -> None:
        driver_uss = worker_uss = system_uss = 0
        worker_name = ""
        driver = self.driver
        for p in self.descendants():
            r = self.read(p)
            if r is None:
                continue
            if driver is not None and r.pid == driver.pid:
                driver_uss = r.memory
            elif is_ray_worker(r.cmd):
                if r.memory > worker_uss:
                    worker_uss, worker_name = r.memory, r.cmd.split()[0]
            elif "gcs_server" in r.cmd or "raylet" in r.cmd:
                system_uss = max(system_uss, r.memory)
        self.rows.append((time.time(), driver_uss, worker_uss, worker_name, system_uss, self.store_bytes()))


# -- the job --------------------------------------------------------------------------

STAGE_LINE = re.compile(r"stage (\S+) (started|done) at ([0-9.]+)")


def launch(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(log_path, "a")  # noqa: SIM115 - closed with the process by the caller
    log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n")
    log.flush()
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.pretrain", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
    )


def stage_events(log_path: Path) -> list[tuple[str, str, float]]:
    return [(m[1], m[2], float(m[3])) for m in STAGE_LINE.finditer(log_path.read_text(errors="replace"))]


def kill_when(proc: subprocess.Popen, ready: Any, poll: float = 0.5) -> float | None:
    """SIGKILL the driver's process group once ``ready()`` is true; the kill's time, or
    None when the job finished first."""
    while proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.time()
        time.sleep(poll)
    return None


def run_size(size: int, backend: str, root: Path, kill: bool, env: dict[str, str], sampler: Sampler) -> dict[str, Any]:
    run = f"s{size}"
    bad = max(1, size // 100)
    per_category = (size - bad) // len(CATEGORIES)
    inputs = root / f"inputs{size}"
    corrupt_ids = write_corrupt_files(inputs, bad)
    total = per_category * len(CATEGORIES) + bad
    mix = f"[{{source: procedural, per_category: {per_category}}}, {{source: files, path: {inputs}}}]"
    argv = [
        f"run={run}",
        f"storage.root={root}",
        "data.source=mix",
        f"data.mix={mix}",
        *SETTINGS,
        f"cluster.backend={backend}",
        "cluster.train_workers=2",
        "cluster.rescore_actors=2",
    ]
    storage = Storage(str(root))
    log_path = root / f"{run}.log"
    kills: dict[str, float] = {}
    kept_parts: dict[str, float] = {}
    knowledge = root / run / "knowledge" / "round_0"
    expected_parts = -(-per_category // 64) * len(CATEGORIES)
    invocations = 0
    started = time.time()

    def go() -> subprocess.Popen:
        nonlocal invocations
        invocations += 1
        proc = launch(argv, log_path, env)
        sampler.driver = psutil.Process(proc.pid)
        return proc

    proc = go()
    if kill:

        def half_extracted() -> bool:
            """Knowledge pieces for half the shape parts (pieces, not parts: see above)."""
            return knowledge.is_dir() and len(list(knowledge.glob("*.parquet"))) >= expected_parts // 2

        at = kill_when(proc, half_extracted)
        if at is not None:
            kills["extract"] = at
            kept_parts.update({p.name: p.stat().st_mtime for p in knowledge.glob("*.parquet")})
            proc = go()

        kill_at: list[float] = []

        def mid_second_epoch() -> bool:
            """Half an epoch (the first's time) after the second fit's resume line."""
            if not kill_at:
                if "resuming after epoch 1" not in log_path.read_text(errors="replace"):
                    return False
                epoch_s = load_torch(storage, f"{run}/checkpoints/all/last.pt")["history"][0]["seconds"]
                kill_at.append(time.time() + epoch_s / 2)
            return time.time() >= kill_at[0]

        at = kill_when(proc, mid_second_epoch)
        if at is not None:
            kills["train"] = at
            proc = go()
    rc = proc.wait()
    sampler.driver = None
    if rc != 0:
        raise SystemExit(f"{run}: jobs.pretrain exited with {rc}; its log: {log_path}")
    wall = time.time() - started
    return {
        "size": size,
        "inputs": total,
        "corrupt": bad,
        "invocations": invocations,
        "kills": kills,
        "wall_s": wall,
        **collect(storage, root, run, log_path, sampler, total, corrupt_ids, kept_parts, kills),
    }


# -- what the run left --------------------------------------------------------------


def collect(
    storage: Storage,
    root: Path,
    run: str,
    log_path: Path,
    sampler: Sampler,
    total: int,
    corrupt_ids: list[str],
    kept_parts: dict[str, float],
    kills: dict[str, float],
) -> dict[str, Any]:
    summary = storage.read_json(f"{run}/metrics.json")["pretrain"]
    shape_ids = _column(root / run / "shapes", "shape_id")
    # a shape's units are all in the part that extracted it: a shape in two parts was
    # extracted twice
    per_part = [set(ids) for ids in _column_by_part(root / run / "knowledge" / "round_0", "shape_id")]
    unit_ids = [i for ids in per_part for i in ids]
    rejects = read_rejects(storage, run)
    by_stage: dict[str, list[dict[str, str]]] = {}
    for r in rejects:
        by_stage.setdefault(r["stage"], []).append(r)
    rejected_ingest = {r["item"] for r in by_stage.get("ingest", [])}
    rejected_extract = {r["item"] for r in by_stage.get("extract", [])}
    reasons = {r["item"]: r["reason"] for r in rejects}
    touched = [
        n
        for n, t in kept_parts.items()
        if not (root / run / "knowledge" / "round_0" / n).exists()
        or (root / run / "knowledge" / "round_0" / n).stat().st_mtime != t
    ]
    history = load_torch(storage, f"{run}/checkpoints/all/final.pt")["history"]
    epochs = [int(h["epoch"]) for h in history]
    checks = {
        "corrupt_rejected_with_reason": all(i in rejected_ingest and reasons[i].strip() for i in corrupt_ids),
        "ingest_adds_up": len(shape_ids) + len(rejected_ingest) == total and len(set(shape_ids)) == len(shape_ids),
        "extract_adds_up": len(set(unit_ids)) + len(rejected_extract & set(shape_ids)) == len(shape_ids),
        "no_shape_extracted_twice": len(unit_ids) == len(set(unit_ids)),
        "parts_before_kill_untouched": not touched,
        "each_epoch_once": epochs == sorted(set(epochs)) == list(range(1, len(epochs) + 1)),
        "first_epoch_from_before_kill": "train" not in kills or history[0]["first_batch_at"] < kills["train"],
    }
    stages = stage_table(stage_events(log_path), sampler.rows, kills, len(shape_ids))
    return {
        "shapes": len(shape_ids),
        "rejected_ingest": len(rejected_ingest),
        "rejected_extract": len(rejected_extract),
        "knowledge_parts": len(per_part),
        "parts_kept_across_kill": len(kept_parts),
        "epochs": epochs,
        "checks": checks,
        "stages": stages,
        "fit_startup_s": first_fit_startup(history, log_path),
        "disk_mib": _du(root / run) / 2**20,
        "store_peak_mib": max((r[5] for r in sampler.rows), default=0.0) / 2**20,
        "spilled_mib": spilled_bytes() / 2**20 if sampler.ray_store else 0.0,
        "system_peak_mib": max((r[4] for r in sampler.rows), default=0) / 2**20,
        "student": summary.get("student"),
        "voting": summary.get("voting"),
    }


def _column_by_part(table: Path, name: str) -> list[list[str]]:
    import pyarrow.parquet as pq

    return [pq.read_table(p, columns=[name]).column(name).to_pylist() for p in sorted(table.glob("*.parquet"))]


def _column(table: Path, name: str) -> list[str]:
    return [v for values in _column_by_part(table, name) for v in values]


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def first_fit_startup(history: list[dict[str, Any]], log_path: Path) -> float | None:
    """Seconds from the train stage's entry to the first fit's first batch (planning, Ray
    Train's start and the first shard's read); None when the log has no train start."""
    first_batch = history[0]["first_batch_at"]
    starts = [t for name, what, t in stage_events(log_path) if name == "train" and what == "started"]
    before = [t for t in starts if t <= first_batch]
    return round(first_batch - before[-1], 2) if before else None


def stage_table(
    events: list[tuple[str, str, float]], rows: list[tuple], kills: dict[str, float], shapes: int
) -> dict[str, dict[str, float]]:
    """Per stage: wall seconds over every invocation (a killed stage counts until its
    kill), ms a shape, and the peaks sampled while it ran."""
    windows: dict[str, list[tuple[float, float]]] = {}
    open_at: dict[str, float] = {}
    kill_times = sorted(kills.values())
    for name, what, t in events:
        if what == "started":
            if name in open_at:  # a killed invocation left it open
                end = min([k for k in kill_times if k > open_at[name]] or [t])
                windows.setdefault(name, []).append((open_at[name], end))
            open_at[name] = t
        else:
            windows.setdefault(name, []).append((open_at.pop(name), t))
    out = {}
    for name in STAGES:
        spans = windows.get(name, [])
        seconds = sum(b - a for a, b in spans)
        inside = [r for r in rows if any(a <= r[0] <= b for a, b in spans)]
        count = shapes if name != "evaluate" else 64
        out[name] = {
            "seconds": round(seconds, 1),
            "ms_per_shape": round(1000 * seconds / max(count, 1), 2),
            "driver_peak_mib": round(max((r[1] for r in inside), default=0) / 2**20, 1),
            "worker_peak_mib": round(max((r[2] for r in inside), default=0) / 2**20, 1),
            "store_peak_mib": round(max((r[5] for r in inside), default=0.0) / 2**20, 1),
        }
    return out


# -- main -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--backend", choices=["ray", "local"], default="ray")
    ap.add_argument("--no-kill", action="store_true", help="no driver kills (one invocation a size)")
    ap.add_argument("--store-mib", type=int, default=256)
    ap.add_argument("--root", default="", help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--out", default="", help="also write the JSON lines here")
    a = ap.parse_args()
    root = Path(a.root or tempfile.mkdtemp(prefix="partdistill-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cluster = None
    if a.backend == "ray":
        cluster = start_cluster(a.store_mib)
        # the job joins this cluster on loopback (cluster.runtime.connect.loopback_only's switch)
        env.update(RAY_ADDRESS=cluster.address, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    sampler = Sampler(ray_store=a.backend == "ray")
    sampler.start()
    rows = []
    try:
        for size in sorted(a.sizes):
            row = run_size(size, a.backend, root, not a.no_kill, env, sampler)
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
    finally:
        sampler.stop()
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    lo, hi = rows[0], rows[-1]
    ratios = {}
    for stage in STAGES:
        for key in ("ms_per_shape", "driver_peak_mib", "worker_peak_mib"):
            a_, b_ = lo["stages"][stage][key], hi["stages"][stage][key]
            ratios[f"{stage}_{key}_ratio"] = round(b_ / a_, 3) if a_ else None
    drv = [max(r["stages"][s]["driver_peak_mib"] for s in STAGES) for r in (lo, hi)]
    wrk = [max(r["stages"][s]["worker_peak_mib"] for s in STAGES) for r in (lo, hi)]
    final = {
        "backend": a.backend,
        "sizes": [r["size"] for r in rows],
        "driver_peak_ratio": round(drv[1] / drv[0], 3) if drv[0] else None,
        "worker_peak_ratio": round(wrk[1] / wrk[0], 3) if wrk[0] else None,
        "fit_startup_ratio": round(hi["fit_startup_s"] / lo["fit_startup_s"], 3)
        if lo["fit_startup_s"] and hi["fit_startup_s"]
        else None,
        **ratios,
        "checks": {k: all(r["checks"][k] for r in rows) for k in rows[0]["checks"]},
    }
    print(json.dumps(final))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(final) + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| shapes | stage | wall (s) | ms a shape | driver peak USS (MiB) | largest worker peak USS (MiB) "
        "| object store peak (MiB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        for stage in STAGES:
            s = r["stages"][stage]
            print(
                f"| {r['size']} | {stage} | {s['seconds']:.0f} | {s['ms_per_shape']:.1f} | {s['driver_peak_mib']:.0f} "
                f"| {s['worker_peak_mib']:.0f} | {s['store_peak_mib']:.0f} |"
            )
    print()
    for r in rows:
        print(
            f"{r['size']}: wall {r['wall_s']:.0f} s over {r['invocations']} invocations, disk {r['disk_mib']:.0f} MiB, "
            f"spilled {r['spilled_mib']:.0f} MiB, store peak {r['store_peak_mib']:.0f} MiB, "
            f"Ray system peak {r['system_peak_mib']:.0f} MiB, fit start-up {r['fit_startup_s']} s, "
            f"student {r['student']} vs voting {r['voting']}, checks {r['checks']}"
        )


if __name__ == "__main__":
    main()
