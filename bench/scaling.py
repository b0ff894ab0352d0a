"""Scaling benchmark: the Ray stages against their single-process twins on the same shapes.

    python -m bench.scaling [--per-category 100] [--image-size 320] [--points 1024] [--epochs 4]

One run, on one set of procedural shapes (3 categories × ``--per-category``, simulated
``glip_like`` teacher) in a temporary local storage root:

``extract``
    ``cluster.passes.extract.extract`` in this process (torch on 1 thread) against the same pass on a
    private local Ray of 2 CPUs, in the layout a CPU-only cluster gets by default (fused:
    actors that render, teach and back-project, one per CPU); ``--split`` measures the GPU
    cluster's layout instead (render tasks of 0.5 CPU beside one teacher actor). The Ray
    stage runs twice into fresh knowledge folders: *cold* (the first Ray Data run: workers
    start, importing torch) and *warm* (idle workers are reused; the actors are new, their
    teachers reloaded).
    shapes/s is end to end (planning, start-up, writing); *streaming* shapes/s is measured
    between the first and the last knowledge part written (start-up excluded).
``train``
    On the knowledge extracted in this process: ``train_local`` (this process, 1 thread) against
    ``train_on_ray`` with 1 and 2 Ray Train workers (gloo; each worker takes 1 CPU and runs
    torch on 1 thread). shapes/s counts every epoch's training shapes: *epochs* over the
    training passes only (each epoch's ``seconds`` in the student's history, rank 0), *loop*
    over the whole ``distil`` loops (plus batch-norm recalibration and the per-epoch
    checkpoints; locally also backward distillation's re-scoring, which on Ray is a Ray Data
    pass between two fits). Start-up (Ray Train's worker groups, the tables read through
    Ray Data, process groups, samples, the re-scoring pass) is the call's wall time minus
    the loops, reported apart.
``memory``
    A sampler thread reads, every 0.25 s, the RSS of this process (the driver) and of
    every process under it (a local Ray's GCS, raylet and workers are its descendants):
    per phase the peak driver RSS, the peak summed RSS of the Ray worker processes (tasks,
    actors, Ray Train workers; shared pages such as the object store count in each
    process that maps them, so the sum overstates) and the CPU seconds of each group.

The machine is shared: ``os.getloadavg()`` is recorded around every phase. The table is
printed, the numbers go to ``bench/results/scaling.json``, and the last line of standard
output is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from bench.common import RESULTS, ROOT, ProcessSampler, is_ray_worker, peak_rss_mib
from cluster.config import Config, load_config
from cluster.passes.extract import extract
from cluster.passes.ingest import ingest
from cluster.store.storage import DONE_KEY, Storage
from cluster.training.checkpoints import checkpoint_dir, load_torch

RESULTS_FILE = RESULTS / "scaling.json"
HISTORY = 20
"""Summaries of earlier runs kept in the JSON: on a shared machine one run is one sample."""
RUN = "scal"
SHAPES = f"{RUN}/shapes"
TARGETS = {"extract": 1.6, "train": 1.4}
MIB = 2**20


# -- measuring -------------------------------------------------------------------------
def part_writes(storage: Storage, table_dir: str) -> list[tuple[float, int]]:
    """``[(write time, shapes finished), ...]`` of a local table's parts, in time order: each
    part's mtime (written whole, then renamed) and the done ids in its metadata."""
    out = []
    for name in storage.part_names(table_dir):
        path = storage.path(table_dir, name)
        done = json.loads((pq.read_schema(path).metadata or {}).get(DONE_KEY, b"[]"))
        out.append((os.stat(path).st_mtime, len(done)))
    return sorted(out)


def streaming_rate(writes: list[tuple[float, int]]) -> float | None:
    """Shapes/s between the first and the last part written (the first part's shapes
    excluded: they paid the start-up)."""
    if len(writes) < 2:
        return None
    span = writes[-1][0] - writes[0][0]
    shapes = sum(n for _, n in writes[1:])
    return shapes / span if span > 0 else None


SYSTEM_MARKERS = ("gcs_server", "raylet", "log_monitor", "monitor.py", "dashboard", "DashboardAgent", "RuntimeEnvAgent")


def _kind(cmd: str) -> str:
    if any(m in cmd for m in SYSTEM_MARKERS):
        return "ray_system"
    if is_ray_worker(cmd):
        return "ray_workers"
    return "other"


class Monitor(ProcessSampler):
    """Samples RSS and CPU time of this process and its descendants (see the module doc)."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(interval, "rss")
        self.cpu_seen: dict[int, float] = {}
        self.current: dict[str, Any] | None = None

    def record(self) -> None:
        rss = {"driver": 0, "ray_workers": 0, "ray_system": 0, "other": 0}
        cpu = {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0, "other": 0.0}
        procs = [(self.read(self.me), "driver"), *((self.read(p), None) for p in self.descendants())]
        for p, kind in procs:
            if p is None:
                continue
            kind = kind or _kind(p.cmd)
            rss[kind] += p.memory
            cpu[kind] += p.cpu_s - self.cpu_seen.get(p.pid, p.cpu_s if self.current is None else 0.0)
            self.cpu_seen[p.pid] = p.cpu_s
        ph = self.current
        if ph is None:
            return
        for k, v in rss.items():
            ph["rss_peak"][k] = max(ph["rss_peak"][k], v)
        for k, v in cpu.items():
            ph["cpu_s"][k] += v

    @contextlib.contextmanager
    def phase(self, name: str, out: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Measure one phase into ``out[name]``: wall s, CPU s per group, peak RSS, load."""
        self.sample()  # CPU counted from here on
        rec: dict[str, Any] = {
            "rss_peak": {"driver": 0, "ray_workers": 0, "ray_system": 0, "other": 0},
            "cpu_s": {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0, "other": 0.0},
            "load_before": [round(x, 2) for x in os.getloadavg()],
        }
        with self.lock:
            self.current = rec
        start = time.perf_counter()
        try:
            yield rec
        finally:
            rec["wall_s"] = time.perf_counter() - start
            self.sample()
            with self.lock:
                self.current = None
            rec["load_after"] = [round(x, 2) for x in os.getloadavg()]
            rec["rss_peak_mib"] = {k: round(v / MIB, 1) for k, v in rec.pop("rss_peak").items()}
            rec["cpu_s"] = {k: round(v, 2) for k, v in rec["cpu_s"].items()}
            rec["wall_s"] = round(rec["wall_s"], 2)
            out[name] = rec
            print(f"[scaling] {name}: {rec['wall_s']:.1f} s, load {rec['load_after'][0]}", file=sys.stderr, flush=True)


# -- the phases ----------------------------------------------------------------------------
def make_config(root: str, args: argparse.Namespace, run: str = RUN, workers: int = 1) -> Config:
    return load_config(
        [
            f"run={run}",
            f"storage.root={root}",
            "data.source=procedural",
            "data.categories=[chair,table,lamp]",
            f"data.per_category={args.per_category}",
            f"data.num_points={args.points}",
            f"render.image_size={args.image_size}",
            "teacher.name=simulated",
            "teacher.preset=glip_like",
            "cluster.num_cpus=2",
            "cluster.render_cpus=0.5",
            f"cluster.extract_layout={'split' if args.split else 'auto'}",
            f"cluster.train_workers={workers}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            "train.bd_rounds=1",
            "train.bd_trigger=epoch",
            f"train.bd_epoch={max(1, args.epochs // 2)}",
            "train.device=cpu",
            "progress=false",
        ]
    )


def extract_figures(storage: Storage, summary: dict[str, Any], rec: dict[str, Any], table_dir: str) -> dict[str, Any]:
    n = summary["new"] + summary["rejected"]
    rate = streaming_rate(part_writes(storage, table_dir))
    return {
        "shapes": n,
        "units": summary["units"],
        "rejected": summary["rejected"],
        "shapes_per_s": round(n / rec["wall_s"], 3),
        "streaming_shapes_per_s": round(rate, 3) if rate else None,
        "cpu_s_per_shape": round(sum(rec["cpu_s"].values()) / max(n, 1), 3),
    }


def train_figures(cfg: Config, storage: Storage, summary: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    (student,) = summary["students"]
    history = load_torch(storage, f"{checkpoint_dir(cfg.run, student['student'])}/final.pt")["history"]
    epochs = len(history)
    shapes = student["shapes"] * epochs  # training shapes of every epoch (shards summed)
    epoch_s = sum(h["seconds"] for h in history)
    loop_s = float(student["seconds"])
    return {
        "epochs": epochs,
        "shapes_per_epoch": student["shapes"],
        "startup_s": round(rec["wall_s"] - loop_s, 2),
        "loop_s": round(loop_s, 2),
        "epochs_s": round(epoch_s, 2),
        "epochs_shapes_per_s": round(shapes / epoch_s, 3),
        "loop_shapes_per_s": round(shapes / loop_s, 3),
        "end_to_end_shapes_per_s": round(shapes / rec["wall_s"], 3),
        "first_loss": student["first_loss"],
        "last_loss": student["last_loss"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback Ray (docs/design.md §7)
    import ray

    from cluster.runtime.connect import connect
    from cluster.training.train import train_local
    from cluster.training.train_ray import train_on_ray

    torch.set_num_threads(1)  # the single-process baselines get one core, as one Ray worker does
    root = tempfile.mkdtemp(prefix="scaling-")
    storage = Storage(root)
    cfg = make_config(root, args)
    mon = Monitor()
    mon.start()
    phases: dict[str, Any] = {}
    out: dict[str, Any] = {"phases": phases}
    t0 = time.perf_counter()
    try:
        with mon.phase("ingest", phases):
            out["ingest"] = ingest(cfg, storage, cfg.data, SHAPES)
        kdirs = {v: f"{RUN}/{v}/knowledge/round_0" for v in ("local", "ray_cold", "ray_warm")}
        with mon.phase("extract_local", phases) as rec:
            s = extract(replace(cfg, cluster=replace(cfg.cluster, backend="local")), storage, SHAPES, kdirs["local"])
        ext = {"local": extract_figures(storage, s, rec, kdirs["local"])}
        with mon.phase("ray_init", phases):
            connect(cfg.cluster)
        for v in ("ray_cold", "ray_warm"):
            with mon.phase(f"extract_{v}", phases) as rec:
                s = extract(replace(cfg, cluster=replace(cfg.cluster, backend="ray")), storage, SHAPES, kdirs[v])
            ext[v] = extract_figures(storage, s, rec, kdirs[v])
        # Ray and this process give identical knowledge (the runner's contract): a sanity check of the run.
        ext["same_units"] = ext["ray_cold"]["units"] == ext["ray_warm"]["units"] == ext["local"]["units"]
        out["extract"] = ext

        units = kdirs["local"]
        train: dict[str, Any] = {}
        tcfg = make_config(root, args, run="train_local")
        with mon.phase("train_local", phases) as rec:
            s = train_local(tcfg, storage, SHAPES, units)
        train["local"] = train_figures(tcfg, storage, s, rec)
        for w in (1, 2):
            tcfg = make_config(root, args, run=f"train_ray{w}", workers=w)
            with mon.phase(f"train_ray_{w}w", phases) as rec:
                s = train_on_ray(tcfg, storage, SHAPES, units)
            train[f"ray_{w}w"] = train_figures(tcfg, storage, s, rec)
        out["train"] = train
    finally:
        ray.shutdown()
        mon.stop(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["driver_maxrss_mib"] = round(peak_rss_mib(), 1)
    return out


# -- reporting -------------------------------------------------------------------------
def ratios(out: dict[str, Any]) -> dict[str, float | None]:
    e, t = out["extract"], out["train"]

    def r(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    return {
        "extract_warm_vs_local": r(e["ray_warm"]["shapes_per_s"], e["local"]["shapes_per_s"]),
        "extract_cold_vs_local": r(e["ray_cold"]["shapes_per_s"], e["local"]["shapes_per_s"]),
        "extract_streaming_warm_vs_local": r(
            e["ray_warm"]["streaming_shapes_per_s"], e["local"]["streaming_shapes_per_s"]
        ),
        "train_loop_2w_vs_1w": r(t["ray_2w"]["loop_shapes_per_s"], t["ray_1w"]["loop_shapes_per_s"]),
        "train_loop_2w_vs_local": r(t["ray_2w"]["loop_shapes_per_s"], t["local"]["loop_shapes_per_s"]),
        "train_epochs_2w_vs_1w": r(t["ray_2w"]["epochs_shapes_per_s"], t["ray_1w"]["epochs_shapes_per_s"]),
        "train_epochs_2w_vs_local": r(t["ray_2w"]["epochs_shapes_per_s"], t["local"]["epochs_shapes_per_s"]),
        "train_end_to_end_2w_vs_local": r(
            t["ray_2w"]["end_to_end_shapes_per_s"], t["local"]["end_to_end_shapes_per_s"]
        ),
    }


def _f(x: float | None, d: int = 2) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _mem(p: dict[str, Any]) -> str:
    m = p["rss_peak_mib"]
    return f"{m['driver']:.0f} / {m['ray_workers']:.0f} / {m['ray_system']:.0f}"


def _cores(p: dict[str, Any]) -> str:
    """CPU seconds of this process and its Ray processes per wall second: the share of the
    machine the variant got (≤ 2 here; others' load takes the rest)."""
    return f"{sum(p['cpu_s'].values()) / p['wall_s']:.2f}"


def table(out: dict[str, Any]) -> str:
    ph, e, t, rt = out["phases"], out["extract"], out["train"], out["ratios"]
    lines = [
        "| extraction | wall s | shapes/s | × local | streaming shapes/s | × local | cores used | CPU s/shape "
        "| peak RSS MiB driver / Ray workers / Ray system | load 1 min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "local": "extract in this process",
        "ray_cold": "extract on Ray, cold",
        "ray_warm": "extract on Ray, warm",
    }
    for v, label in names.items():
        p, x, base = ph[f"extract_{v}"], e[v], e["local"]
        lines.append(
            f"| {label} | {p['wall_s']:.1f} | {x['shapes_per_s']:.2f} | {_f(_div(x['shapes_per_s'], base['shapes_per_s']))} "
            f"| {_f(x['streaming_shapes_per_s'])} "
            f"| {_f(_div(x['streaming_shapes_per_s'], base['streaming_shapes_per_s']))} | {_cores(p)} "
            f"| {x['cpu_s_per_shape']:.3f} | {_mem(p)} | {p['load_after'][0]:.1f} |"
        )
    lines += [
        "",
        "| training | wall s | start-up s | loop s | shapes/s loop | × local | × 1 worker | shapes/s epochs only "
        "| × 1 worker | cores used | peak RSS MiB driver / Ray workers / Ray system | load 1 min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"local": "train_local (1 thread)", "ray_1w": "train_on_ray, 1 worker", "ray_2w": "train_on_ray, 2 workers"}
    for v, label in names.items():
        p, x, base, one = ph[f"train_{v}"], t[v], t["local"], t["ray_1w"]
        lines.append(
            f"| {label} | {p['wall_s']:.1f} | {x['startup_s']:.1f} | {x['loop_s']:.1f} | {x['loop_shapes_per_s']:.2f} "
            f"| {_f(_div(x['loop_shapes_per_s'], base['loop_shapes_per_s']))} "
            f"| {_f(_div(x['loop_shapes_per_s'], one['loop_shapes_per_s']))} | {x['epochs_shapes_per_s']:.2f} "
            f"| {_f(_div(x['epochs_shapes_per_s'], one['epochs_shapes_per_s']))} | {_cores(p)} | {_mem(p)} "
            f"| {p['load_after'][0]:.1f} |"
        )
    lines += [
        "",
        f"Ray start (ray.init, 2 CPUs): {ph['ray_init']['wall_s']:.1f} s. Streaming: between the first and the last "
        "knowledge part written. Loop: the whole distil loop (training passes, batch-norm recalibration, re-scoring, "
        "checkpoints); epochs only: the training passes. Start-up: the call's wall time minus the loop.",
        "",
        "| ratio | value | target |",
        "|---|---:|---:|",
    ]
    for k, v in rt.items():
        target = TARGETS["extract"] if k.startswith("extract") else TARGETS["train"]
        lines.append(f"| {k} | {_f(v)} | ≥ {target} |")
    return "\n".join(lines)


def save(out: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """This run's numbers to ``path``, with the summaries of up to HISTORY earlier runs."""
    history: list[dict[str, Any]] = []
    if path.exists():
        try:
            previous = json.loads(path.read_text())
            history = previous.get("history", [])
            if "summary" in previous:
                history = [previous["summary"], *history]
        except (ValueError, AttributeError):
            history = []
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**out, "summary": {**summary, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, "history": history[:HISTORY]}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-category", type=int, default=100, help="shapes per category (3 categories)")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--split", action="store_true", help="extraction in the split layout (render tasks → teacher actor)"
    )
    args = ap.parse_args(argv)

    out = run(args)
    out["ratios"] = ratios(out)
    out["config"] = {
        **vars(args),
        "categories": 3,
        "teacher": "simulated glip_like",
        "render_cpus": 0.5,
        "ray_cpus": 2,
        "extract_layout": "split" if args.split else "fused",
    }
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["loadavg_start"] = out["phases"]["ingest"]["load_before"]
    print(table(out), flush=True)
    r = out["ratios"]
    summary = {
        "extract_x": r["extract_warm_vs_local"],
        "extract_cold_x": r["extract_cold_vs_local"],
        "extract_streaming_x": r["extract_streaming_warm_vs_local"],
        "train_2w_vs_1w_x": r["train_loop_2w_vs_1w"],
        "train_2w_vs_local_x": r["train_loop_2w_vs_local"],
        "train_epochs_2w_vs_1w_x": r["train_epochs_2w_vs_1w"],
        "same_units": out["extract"]["same_units"],
        "targets": TARGETS,
        "loadavg_start": out["loadavg_start"],
        "loadavg_end": out["loadavg_end"],
        "seconds": out["seconds"],
        "json": str(RESULTS_FILE.relative_to(ROOT)),
    }
    save(out, summary, RESULTS_FILE)
    print(json.dumps(summary), flush=True)
    return out


if __name__ == "__main__":
    main()
