"""Generated shapes as a knowledge source, measured on real meshes (PartDistill's third claim).

Per covered Labeled PSB category, the Pre student (forward distillation) distilled from

* ``real``       the real PSB shapes of the train half (``data.*``);
* ``generated``  procedural shapes only (``--per-category`` a category; the procedural
                 generator stands in for Shap-E, which runs here only with random weights);
* ``mixed``      generated + real, the real shapes repeated so that they make
                 ``--real-share`` of every epoch (the stated ratio);

all scored on the PSB test half (``eval.data.*``) against the teacher's own votes on those
shapes (``voting``, ``voting_nearest``). The teacher is the *simulated* ``glip_like`` one
(docs/design.md §4): a stand-in for a VLM, never presented as one. Vocabulary: every shape is
mapped onto the concepts procedural and PSB share (``data.vocabulary=[procedural,psb]``,
``distill.vocab``); the mappings used are printed. ``--truth`` adds the same students
trained on ground-truth labels instead of the teacher's units (the ceiling).

    python -m bench.generated                      # 8 covered categories, 3 seeds
    python -m bench.generated --seeds 0 --per-category 50 data.path=... eval.data.path=...

Prints a Markdown table, writes ``bench/results/generated.json``; the last line is one JSON
object with the means over categories of ``real``, ``generated``, ``mixed``, ``voting``,
``voting_nearest``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.common import PSB, RESULTS, truth_units
from bench.quality import load
from cluster.config import Config, load_config
from cluster.passes.evaluate import voting_tables
from cluster.pipeline import extract_stage
from cluster.store.paths import distill_tables, evaluated_tables
from cluster.store.storage import Storage
from distill.config import DataConfig
from distill.labels import LabelSpace, group_for_students
from distill.metrics import MIoUTable
from distill.passes import evaluate
from distill.records import KnowledgeUnits, Shape
from distill.samples import prepare_samples
from distill.student import build_student
from distill.training import distil
from distill.vocab import part_mapping

COVERED = ["Airplane", "Chair", "Cup", "Glasses", "Human", "Plier", "Table", "Vase"]
"""PSB categories the procedural generator makes (Airplane, Chair, Table under ShapeNetPart
names, mapped; the others in PSB's own)."""
STUDENTS = ("real", "generated", "mixed")
METHODS = ("voting", "voting_nearest", *STUDENTS)
DEFAULTS = [
    "data.source=psb",
    f"data.path={PSB}",
    "data.split=train",
    f"data.categories=[{','.join(COVERED)}]",
    "data.vocabulary=[procedural,psb]",
    "eval.data.source=psb",
    f"eval.data.path={PSB}",
    "eval.data.split=test",
    f"eval.data.categories=[{','.join(COVERED)}]",
    "eval.data.vocabulary=[procedural,psb]",
    "render.image_size=320",
    "teacher.name=simulated",
    "teacher.preset=glip_like",
    "progress=false",
    "cluster.backend=local",
    "student.align=cube",  # PSB meshes are not consistently posed (distill/pose.py)
    "train.bd_rounds=0",  # forward distillation: BD lowers mIoU on these data (README, Quality)
]


def repeat_ids(shapes: list[Shape], times: int) -> list[Shape]:
    """``shapes`` repeated ``times`` times, copies renamed ``<id>#r<k>`` (ids stay unique)."""
    return [s if k == 0 else replace(s, shape_id=f"{s.shape_id}#r{k}") for k in range(times) for s in shapes]


def real_repeats(n_real: int, n_generated: int, share: float) -> int:
    """How many times to repeat ``n_real`` shapes so they make ``share`` of an epoch with ``n_generated``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"--real-share={share} must be in (0, 1)")
    if n_real <= 0:
        raise ValueError("no real distillation shapes")
    return max(1, round(share / (1.0 - share) * n_generated / n_real))


def epochs_for(n_shapes: int, passes: int, epochs: int) -> int:
    """Epochs so that a corpus of ``n_shapes`` sees about ``passes`` shape passes (at most ``epochs``, at least 3)."""
    return max(3, min(epochs, round(passes / max(n_shapes, 1))))


def train_and_score(
    cfg: Config, shapes: list[Shape], units: dict[str, KnowledgeUnits], scored: list[Shape], epochs: int
) -> tuple[MIoUTable, float]:
    """Forward-distil the students of ``shapes`` for ``epochs`` epochs, score ``scored``."""
    table, start = MIoUTable(), time.perf_counter()
    train_cfg = replace(cfg.train, epochs=epochs)
    for group in group_for_students(shapes, train_cfg.per_category):
        space = LabelSpace.from_shapes(group)
        by_id = {s.shape_id: u for s in group if (u := units.get(s.shape_id.split("#r")[0])) is not None}
        renamed = {s.shape_id: replace(by_id[s.shape_id], shape_id=s.shape_id) for s in group if s.shape_id in by_id}
        samples = prepare_samples(group, renamed, space, cfg.data.num_points, cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build_student(cfg.student, space.num_slots, space.num_categories)
        result = distil(model, samples, space, train_cfg, "cpu", cfg.seed)
        mine = [s for s in scored if s.category in space.categories]
        table.per_shape.update(evaluate(result.model, mine, "cpu", train_cfg.batch_size, space).per_shape)
    return table, time.perf_counter() - start


def run_seed(argv: list[str], seed: int, args: argparse.Namespace) -> dict[str, MIoUTable]:
    cfg = load_config(
        [*DEFAULTS, *argv, f"seed={seed}", f"run=generated-s{seed}", "mode=pre", f"storage.root={args.root}"]
    )
    storage = Storage.from_config(cfg.storage)
    t0 = time.perf_counter()
    extract_stage(cfg, storage)
    extract_stage(cfg, storage, evaluated=True)
    # The generated corpus: procedural shapes of the covered categories, its own run.
    gen_data = DataConfig(
        source="procedural",
        categories=list(cfg.data.categories),
        split="train",
        per_category=args.per_category,
        num_points=cfg.data.num_points,
        vocabulary=list(cfg.data.vocabulary),
    )
    gen_cfg = replace(cfg, data=gen_data, run=f"generated-s{seed}-proc{args.per_category}")
    extract_stage(gen_cfg, storage)
    real, real_units = load(storage, *distill_tables(cfg))
    test, test_units = load(storage, *evaluated_tables(cfg))
    gen, gen_units = load(storage, *distill_tables(gen_cfg))
    print(
        f"seed {seed}: knowledge for {len(real)} real + {len(gen)} generated + {len(test)} scored shapes "
        f"in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    out = voting_tables(test, test_units)
    units = {**real_units, **gen_units}
    reps = real_repeats(len(real), len(gen), args.real_share)
    corpora = {"real": real, "generated": gen, "mixed": gen + repeat_ids(real, reps)}
    for name, shapes in corpora.items():
        epochs = cfg.train.epochs if name == "real" else epochs_for(len(shapes), args.passes, cfg.train.epochs)
        runs = [] if args.truth_only else [("", units)]
        if args.truth or args.truth_only:
            runs.append(("_truth", {s.shape_id: truth_units(s) for s in real + gen}))
        for suffix, u in runs:
            table, seconds = train_and_score(cfg, shapes, u, test, epochs)
            out[name + suffix] = table
            partial = RESULTS / f"generated_seed{seed}{suffix}.partial.json"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({k: t.per_shape for k, t in out.items()}) + "\n")
            print(
                f"seed {seed} {name}{suffix}: {len(shapes)} shapes x {epochs} epochs, "
                f"{table.category_mean():.1f} mIoU ({seconds:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    return out


def _seed_worker(argv: list[str], seed: int, args: argparse.Namespace) -> dict[str, dict[str, tuple[str, float]]]:
    """One seed in a worker process (``--jobs``); saves its tables as it finishes."""
    torch.set_num_threads(args.threads)
    tables = run_seed(argv, seed, args)
    per_shape = {name: t.per_shape for name, t in tables.items()}
    path = RESULTS / f"generated_seed{seed}{'_truth' if args.truth_only else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(per_shape) + "\n")
    return per_shape


def aggregate(per_seed: list[dict[str, MIoUTable]], methods: list[str]) -> dict[str, Any]:
    """Mean ± std over seeds of each method's per-category and category-mean mIoU."""
    result: dict[str, Any] = {"per_category": {}}
    for m in methods:
        means = [t[m].category_mean() for t in per_seed]
        result[m] = round(float(np.mean(means)), 2)
        result[f"{m}_std"] = round(float(np.std(means)), 2)
        cats: dict[str, list[float]] = {}
        for t in per_seed:
            for c, v in t[m].per_category().items():
                cats.setdefault(c, []).append(v)
        result["per_category"][m] = {
            c: [round(float(np.mean(v)), 2), round(float(np.std(v)), 2)] for c, v in cats.items()
        }
    return result


def markdown(agg: dict[str, Any], methods: list[str], seeds: int) -> str:
    cats = sorted(agg["per_category"]["voting"])
    lines = [
        f"Pre, PSB test half (mIoU, mean ± std over {seeds} seed{'s' if seeds > 1 else ''})",
        "",
        "| category | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for c in cats:
        cells = [agg["per_category"][m].get(c, [float("nan"), 0.0]) for m in methods]
        lines.append(f"| {c} | " + " | ".join(f"{v:.1f} ± {s:.1f}" for v, s in cells) + " |")
    lines.append(
        "| **mean over categories** | "
        + " | ".join(f"**{agg[m]:.1f} ± {agg[m + '_std']:.1f}**" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-category", type=int, default=100, help="generated shapes per category")
    parser.add_argument("--passes", type=int, default=4000, help="shape passes of a generated/mixed student")
    parser.add_argument("--real-share", type=float, default=0.25, help="share of real shapes in a mixed epoch")
    parser.add_argument("--truth", action="store_true", help="also train on ground truth (the ceiling)")
    parser.add_argument("--truth-only", action="store_true", help="only the ground-truth students")
    parser.add_argument("--root", default=str(RESULTS / "generated_runs"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many parallel processes")
    parser.add_argument("overrides", nargs="*", help="config keys, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = load_config([*DEFAULTS, *args.overrides])
    mappings = [part_mapping(c, "psb", "procedural").describe() for c in cfg.eval.data.categories]
    print("vocabulary mappings (PSB → common):\n  " + "\n  ".join(mappings), file=sys.stderr, flush=True)
    if args.jobs > 1:  # seeds in parallel processes, ``--threads`` each
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_seed_worker, args.overrides, seed, args) for seed in args.seeds]
            saved = [f.result() for f in futures]
    else:
        saved = [_seed_worker(args.overrides, seed, args) for seed in args.seeds]
    runs = [{name: MIoUTable(dict(per)) for name, per in tables.items()} for tables in saved]
    truth = [f"{s}_truth" for s in STUDENTS]
    methods = ["voting", "voting_nearest"] + truth if args.truth_only else list(METHODS) + (truth if args.truth else [])
    agg = aggregate(runs, methods)
    print(markdown(agg, methods, len(args.seeds)) + "\n")
    summary = {
        **agg,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "per_category_generated": args.per_category,
        "passes": args.passes,
        "real_share": args.real_share,
        "mappings": mappings,
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    out = RESULTS / ("generated_truth.json" if args.truth_only else "generated.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    keys = [m for m in methods if m in METHODS] + [m for m in methods if m not in METHODS]
    print(json.dumps({m: agg[m] for m in keys} | {"minutes": summary["minutes"]}))


if __name__ == "__main__":
    main()
