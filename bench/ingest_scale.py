"""Ingest of files on a multi-node Ray: driver memory from 5K to 50K files, and throughput
with 2 worker nodes against 1.

The job's own code (``cluster.passes.ingest.ingest``, ``data.source=files``, ``cluster.backend=ray``)
runs as a driver process of its own (``python -m bench.ingest_scale _driver``) joined to a
``ray.cluster_utils.Cluster``: a head with no CPU (it schedules nothing) and 1 or 2 worker
nodes of 1 CPU each, all on this machine. The files are tiny point clouds (binary PLY,
``--points`` points; the reader, sampling, superpoints and Parquet writes are the real
ones), so the driver's own cost per file, not the workers', is what grows with the corpus.

Runs, one at a time:
  small_1: ``--small`` files, 1 worker node  → throughput
  small_2: ``--small`` files, 2 worker nodes → throughput, driver peak
  large_2: ``--large`` files, 2 worker nodes → driver peak

Driver CPU: the driver process's CPU seconds (this machine has 2 cores: the nodes share
them with the driver and Ray's own processes, so the 2v1 figure is bounded by them).
Driver peak: the highest USS (pages only the driver maps) and PSS of the driver process,
sampled every 0.2 s. The last line of output is one JSON object with
``ingest_throughput_2v1`` (small_2 / small_1 files per second) and
``ingest_driver_peak_ratio`` (large_2 / small_2 peak USS).

    python -m bench.ingest_scale                      # 5K and 50K files, ~10 min here
    python -m bench.ingest_scale --small 500 --large 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import ROOT, save

CATEGORIES = ("chair", "table", "lamp", "mug")


def write_files(folder: Path, count: int, points: int) -> None:
    """``count`` binary PLY point clouds in one folder per category (the ``files`` source's
    category is the folder's name)."""
    rng = np.random.default_rng(0)
    head = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {points}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    ).encode()
    for c in CATEGORIES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        body = rng.random((points, 3), dtype=np.float32).astype("<f4").tobytes()
        (folder / CATEGORIES[i % len(CATEGORIES)] / f"{i:07d}.ply").write_bytes(head + body)


def driver(args: argparse.Namespace) -> None:
    """The job's ingest on the cluster at ``RAY_ADDRESS``; prints its summary and seconds."""
    from cluster.config import load_config
    from cluster.passes.ingest import ingest
    from cluster.store.storage import Storage

    cfg = load_config(
        [
            "run=ingest",
            "data.source=files",
            f"data.path={args.files}",
            f"data.num_points={args.points}",
            f"storage.root={args.store}",
            "cluster.backend=ray",
            "progress=false",
        ]
    )
    start = time.perf_counter()
    summary = ingest(cfg, Storage.from_config(cfg.storage))
    print(json.dumps({"seconds": time.perf_counter() - start, "new": summary["new"], "rejected": summary["rejected"]}))


def run(files: Path, count: int, nodes: int, points: int) -> dict[str, float]:
    """One ingest of ``files`` (``count`` of them) on a fresh cluster of ``nodes`` 1-CPU
    worker nodes → throughput and the driver's peak memory."""
    from ray.cluster_utils import Cluster

    from cluster.runtime.connect import loopback_only

    loopback_only()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    peak = {"uss": 0.0, "pss": 0.0, "cpu": 0.0}
    with tempfile.TemporaryDirectory(prefix="ingest_store_") as store:
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        cmd = [sys.executable, "-m", "bench.ingest_scale", "_driver", "--files", str(files), "--store", store]
        cmd += ["--points", str(points)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        me = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                info, cpu = me.memory_full_info(), me.cpu_times()
                peak["uss"], peak["pss"] = max(peak["uss"], info.uss), max(peak["pss"], info.pss)
                peak["cpu"] = cpu.user + cpu.system
            except psutil.Error:
                pass
            time.sleep(0.2)
        out = proc.stdout.read() if proc.stdout else ""
    cluster.shutdown()
    if proc.returncode:
        raise SystemExit(f"the ingest driver exited {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["new"] != count:
        raise SystemExit(f"ingested {result['new']} of {count} files (rejected {result['rejected']})")
    return {
        "files": count,
        "nodes": nodes,
        "seconds": round(result["seconds"], 1),
        "files_per_s": round(count / result["seconds"], 1),
        "driver_peak_uss_mib": round(peak["uss"] / 2**20, 1),
        "driver_peak_pss_mib": round(peak["pss"] / 2**20, 1),
        "driver_cpu_s": round(peak["cpu"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--points", type=int, default=256)
    one = sub.add_parser("_driver", help="internal: one ingest, as a Ray driver")
    one.add_argument("--files", required=True)
    one.add_argument("--store", required=True)
    one.add_argument("--points", type=int, default=256)
    args = parser.parse_args()
    if args.command == "_driver":
        driver(args)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="ingest_files_") as tmp:
        runs = {}
        for name, count, nodes in (("small_1", args.small, 1), ("small_2", args.small, 2), ("large_2", args.large, 2)):
            files = Path(tmp) / f"files_{count}"
            if not files.exists():
                write_files(files, count, args.points)
            runs[name] = run(files, count, nodes, args.points)
            print(name, json.dumps(runs[name]), flush=True)
    result = {
        "runs": runs,
        "ingest_throughput_2v1": round(runs["small_2"]["files_per_s"] / runs["small_1"]["files_per_s"], 3),
        "ingest_driver_peak_ratio": round(
            runs["large_2"]["driver_peak_uss_mib"] / runs["small_2"]["driver_peak_uss_mib"], 3
        ),
        "ingest_driver_peak_ratio_pss": round(
            runs["large_2"]["driver_peak_pss_mib"] / runs["small_2"]["driver_peak_pss_mib"], 3
        ),
    }
    save("ingest_scale", f"{args.small}_{args.large}", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
