"""Generation benchmarks: shapes per second per actor, peak memory, and the Ray stage.

    python -m bench.generate actor [--procedural 200] [--shap-e 8] [--steps 64] [--grid 128] [--batch 4]
    python -m bench.generate ray [--count 10000] [--cpus 2]
    python -m bench.generate real-size [--grid 128]

``actor``: what one generator actor (one Ray CPU: torch on one thread) makes per second,
each generator in a subprocess of its own so peak RSS (``ru_maxrss``) is its own:
* procedural: ``make_shape`` + ``check_mesh`` (2,048 points);
* tiny Shap-E (random weights, tests/generation/tiny_shap_e.py) with the real settings
  (64 Heun steps, guidance 15, a 128³ SDF lattice), split into diffusion, SDF query,
  marching cubes, and filter + point sampling. The tiny prior is ~1/1000 of the real one:
  this measures the pipeline's fixed costs, not Shap-E's.
Peak traced memory (``tracemalloc``: Python and numpy allocations; torch's are not traced)
comes from a second, shorter pass, since tracing slows everything down.

``ray``: ``--count`` procedural shapes (spread over the 8 procedural categories) through
``cluster.passes.generate.generate`` (``cluster.backend=ray``) on a private local Ray of ``--cpus`` CPUs into a temporary folder:
wall time from submission to the last part written, shapes per second.

``real-size``: the compute of a real-size Shap-E with random weights (same architecture
as openai/shap-e, so the same cost): one forward pass of the 24-layer prior at batch 2
(classifier-free guidance) and one 128³ SDF query of the 256-wide implicit MLP, on CPU,
with their FLOPs counted by ``torch.utils.flop_counter``; the per-shape cost is then
extrapolated (64 Heun steps = 127 prior passes). Not a GPU measurement.

Every run prints a table and merges its numbers into ``bench/results/generate.json``.
Timings on a shared machine are noisy: CPU seconds are recorded beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.common import peak_rss_mib, run_module, save, timed


# ----------------------------------------------------------------------------- actor
def one_procedural(n: int) -> dict:
    import trimesh

    from generation.filters import check_mesh
    from generation.procedural import CATEGORIES, make_shape

    def run(count: int) -> int:
        ok = 0
        for i in range(count):
            category = CATEGORIES[i % len(CATEGORIES)]
            shape = make_shape(category, i // len(CATEGORIES), 0, 2048)
            ok += check_mesh(trimesh.Trimesh(shape.mesh.vertices, shape.mesh.faces, process=False), category) is None
        return ok

    run(len(CATEGORIES))  # warm-up
    passed, cpu, wall = timed(lambda: run(n))
    tracemalloc.start()
    run(max(8, n // 10))
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "shapes": n,
        "passed_filters": passed,
        "cpu_s_per_shape": cpu / n,
        "wall_s_per_shape": wall / n,
        "shapes_per_s_per_actor": n / wall,
        "peak_traced_mb": traced / 2**20,
        "peak_rss_mb": peak_rss_mib(),
    }


def one_shap_e(n: int, steps: int, grid: int, batch: int) -> dict:
    from generation.filters import check_mesh
    from generation.prompts import make_prompt
    from generation.shap_e import ShapEGenerator, generated_shape, mesh_from_sdf
    from tests.generation.tiny_shap_e import build_tiny_shap_e

    with tempfile.TemporaryDirectory(prefix="tiny_shap_e_") as directory:
        build_tiny_shap_e(directory)
        gen, _, load_wall = timed(
            lambda: ShapEGenerator(directory, device="cpu", num_inference_steps=steps, grid_size=grid)
        )
    parts = ["back", "seat", "leg", "armrest"]
    gen.generate(["a chair"], [0])  # warm-up

    def run(count: int) -> dict:
        t = dict.fromkeys(("diffusion", "sdf", "marching_cubes", "filter_and_sample"), 0.0)
        passed = 0
        for lo in range(0, count, batch):
            idx = list(range(lo, min(count, lo + batch)))
            s = time.perf_counter()
            latents = gen.latents([make_prompt("Chair", i, 0) for i in idx], idx)
            t["diffusion"] += time.perf_counter() - s
            for z, i in zip(latents, idx):
                s = time.perf_counter()
                field = gen.sdf_grid(z)
                t["sdf"] += time.perf_counter() - s
                s = time.perf_counter()
                mesh = mesh_from_sdf(field)
                t["marching_cubes"] += time.perf_counter() - s
                s = time.perf_counter()
                if check_mesh(mesh, "Chair") is None:
                    generated_shape(mesh, "Chair", i, parts, 2048, i, {"prompt": "x"})
                    passed += 1
                t["filter_and_sample"] += time.perf_counter() - s
        return {"passed_filters": passed, **{f"{k}_wall_s_per_shape": v / count for k, v in t.items()}}

    split, cpu, wall = timed(lambda: run(n))
    tracemalloc.start()
    run(min(n, batch))
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "shapes": n,
        "steps": steps,
        "grid": grid,
        "batch": batch,
        "load_wall_s": load_wall,
        **split,
        "cpu_s_per_shape": cpu / n,
        "wall_s_per_shape": wall / n,
        "shapes_per_s_per_actor": n / wall,
        "peak_traced_mb": traced / 2**20,
        "peak_rss_mb": peak_rss_mib(),
    }


def _subprocess(kind: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # a Ray actor of 1 CPU
    out = run_module("bench.generate", ["_one", kind, *args], env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} benchmark failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_actor(args: argparse.Namespace) -> None:
    rows = {
        "procedural": _subprocess("procedural", [str(args.procedural)]),
        "shap_e_tiny": _subprocess("shap_e", [str(args.shap_e), str(args.steps), str(args.grid), str(args.batch)]),
    }
    print(f"{'generator':14s} {'shapes':>6s} {'shapes/s':>9s} {'cpu s/shape':>11s} {'traced MB':>9s} {'RSS MB':>7s}")
    for name, r in rows.items():
        print(
            f"{name:14s} {r['shapes']:6d} {r['shapes_per_s_per_actor']:9.2f} {r['cpu_s_per_shape']:11.4f} "
            f"{r['peak_traced_mb']:9.1f} {r['peak_rss_mb']:7.0f}"
        )
    r = rows["shap_e_tiny"]
    print(
        "tiny shap_e split (wall s/shape): "
        + ", ".join(
            f"{k}={r[f'{k}_wall_s_per_shape']:.3f}" for k in ("diffusion", "sdf", "marching_cubes", "filter_and_sample")
        )
    )
    save("generate", "actor", {"torch_threads": 1, **rows})


# ----------------------------------------------------------------------------- ray
def run_ray(args: argparse.Namespace) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from cluster.config import load_config
    from cluster.passes.generate import generate, part_shapes
    from cluster.runtime.connect import connect
    from cluster.store.storage import Storage
    from generation.procedural import CATEGORIES

    per_category = -(-args.count // len(CATEGORIES))
    cfg = load_config(
        [
            "run=bench",
            f"generation.count={per_category}",
            "data.num_points=2048",
            "progress=false",
            f"cluster.num_cpus={args.cpus}",
            "cluster.backend=ray",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as root:
        storage = Storage(root)
        start = time.perf_counter()
        connect(cfg.cluster)
        ray_start = time.perf_counter() - start
        try:
            start = time.perf_counter()
            summary = generate(cfg, storage)
            stage_wall = time.perf_counter() - start
        finally:
            ray.shutdown()
        size_mb = sum(f.stat().st_size for f in Path(root, "bench", "shapes").glob("*.parquet")) / 2**20
    row = {
        "shapes": summary["new"] + summary["rejected"],
        "written": summary["new"],
        "rejected": summary["rejected"],
        "parts": summary["parts"],
        "shapes_per_part": part_shapes(summary["asked"]),
        "cpus": args.cpus,
        "ray_start_s": ray_start,
        "stage_wall_s": stage_wall,
        "shapes_per_s": (summary["new"] + summary["rejected"]) / stage_wall,
        "shapes_per_s_per_cpu": (summary["new"] + summary["rejected"]) / stage_wall / args.cpus,
        "table_mb": size_mb,
        "driver_peak_rss_mb": peak_rss_mib(),
    }
    print(
        f"ray procedural: {row['shapes']} shapes in {row['stage_wall_s']:.1f} s on {args.cpus} CPUs = "
        f"{row['shapes_per_s']:.1f} shapes/s ({row['shapes_per_s_per_cpu']:.1f}/CPU), {row['parts']} parts, "
        f"{row['table_mb']:.1f} MB, driver peak RSS {row['driver_peak_rss_mb']:.0f} MB"
    )
    save("generate", f"ray_procedural_{row['shapes']}", row)


# ----------------------------------------------------------------------------- real size
def run_real_size(args: argparse.Namespace) -> None:
    import torch
    from diffusers import PriorTransformer
    from diffusers.pipelines.shap_e import ShapERenderer
    from diffusers.pipelines.shap_e.renderer import BoundingBoxVolume, volume_query_points
    from torch.utils.flop_counter import FlopCounterMode

    from tests.generation.tiny_shap_e import REAL_PRIOR

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = PriorTransformer(**REAL_PRIOR).eval()
    params = sum(p.numel() for p in prior.parameters())
    x = torch.randn(2, 1024, 1024)  # CFG: unconditional + conditional
    emb = torch.randn(2, 768)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _, prior_cpu, prior_wall = timed(lambda: prior(x, timestep=torch.tensor(10), proj_embedding=emb))
    prior_flops = counter.get_total_flops()

    renderer = ShapERenderer().eval()
    latent = torch.randn(1, 1024, 1024) * 0.02
    lattice = volume_query_points(BoundingBoxVolume(bbox_max=[1.0] * 3, bbox_min=[-1.0] * 3), args.grid)

    def sdf_query() -> None:
        weights = {k.removeprefix("nerstf."): w[0] for k, w in renderer.params_proj(latent).items()}
        for lo in range(0, len(lattice), 1 << 16):
            torch.func.functional_call(
                renderer.mlp,
                weights,
                (),
                {
                    "position": lattice[None, lo : lo + (1 << 16)],
                    "direction": None,
                    "ts": None,
                    "nerf_level": "fine",
                    "rendering_mode": "stf",
                },
                strict=False,
            )

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _, _, sdf_wall = timed(sdf_query)
    sdf_flops = counter.get_total_flops()
    evals = 2 * 64 - 1  # Heun: two model evaluations per step but the last
    per_shape_flops = evals * prior_flops + sdf_flops
    row = {
        "prior_params_m": params / 1e6,
        "torch_threads": args.threads,
        "prior_pass_batch2_wall_s": prior_wall,
        "prior_pass_batch2_cpu_s": prior_cpu,
        "prior_pass_tflop": prior_flops / 1e12,
        "sdf_grid": args.grid,
        "sdf_query_wall_s": sdf_wall,
        "sdf_query_tflop": sdf_flops / 1e12,
        "prior_passes_per_shape": evals,
        "per_shape_tflop": per_shape_flops / 1e12,
        "per_shape_cpu_wall_s_extrapolated": evals * prior_wall + sdf_wall,
        "peak_rss_mb": peak_rss_mib(),
    }
    print(
        f"real-size prior: {row['prior_params_m']:.0f}M params; one CFG pass {prior_wall:.1f} s on {args.threads} "
        f"thread(s), {row['prior_pass_tflop']:.2f} TFLOP; SDF {args.grid}³ {sdf_wall:.1f} s, "
        f"{row['sdf_query_tflop']:.2f} TFLOP\nper shape: {evals} prior passes + 1 SDF = {row['per_shape_tflop']:.0f} "
        f"TFLOP ≈ {row['per_shape_cpu_wall_s_extrapolated'] / 60:.0f} min on this CPU (extrapolated)"
    )
    save("generate", "real_size_cpu", row)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_one":
        kind, rest = sys.argv[2], [int(a) for a in sys.argv[3:]]
        import torch

        torch.set_num_threads(1)
        result = one_procedural(*rest) if kind == "procedural" else one_shap_e(*rest)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("actor")
    a.add_argument("--procedural", type=int, default=200)
    a.add_argument("--shap-e", type=int, default=8)
    a.add_argument("--steps", type=int, default=64)
    a.add_argument("--grid", type=int, default=128)
    a.add_argument("--batch", type=int, default=4)
    r = sub.add_parser("ray")
    r.add_argument("--count", type=int, default=10_000)
    r.add_argument("--cpus", type=int, default=2)
    s = sub.add_parser("real-size")
    s.add_argument("--grid", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"actor": run_actor, "ray": run_ray, "real-size": run_real_size}[args.cmd](args)


if __name__ == "__main__":
    main()
