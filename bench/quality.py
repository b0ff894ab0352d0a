"""Quality benchmark: does the student beat the teacher's own votes?

For a labelled corpus and the *simulated* ``glip_like`` teacher (docs/design.md §4 — a stand-in
for a VLM, never presented as one), per category, mean ± std over init seeds × data orders:

* ``voting``          per point, the best-scored part over the units covering it (PartSLIP-style);
* ``voting_nearest``  the same, uncovered points taking their nearest covered point's label;
* ``voting_views``    the vote with the units' evidence against (``distill.evidence``);
* ``student``         the student, trained and scored by the jobs' own code;
* ``student_units``   the student combined with each scored shape's units (``eval.units_weight``).

The student is the job's: every run goes through ``cluster.pipeline.train_stage`` (the
streaming ``PartSource``, its calibration and pose references, checkpoints, the
configured backward distillation) and ``evaluate_stage`` (the job's evaluation), so a bug
in the job cannot hide from this benchmark. Knowledge is extracted once per seed (the
simulated teacher's noise follows the seed) and linked into one run folder per
(mode, order).

Modes: ``pre`` distils on ``data`` (the train half) and scores ``eval.data`` (the test
half); ``tta`` distils on ``eval.data`` itself and scores it. Both score the same shapes,
so the rows compare. Checkpoints are fixed by the schedule (last epoch) or chosen on
teacher agreement (``train.select=val``): test labels are read only to score.

    python bench/quality.py                              # Labeled PSB sample, 3 seeds × 2 orders, pre + tta
    python bench/quality.py --seeds 0 --orders 100 --modes tta train.epochs=40

Prints a Markdown table per mode, writes ``bench/results/quality.json``; the last line of
output is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import load_config  # noqa: E402
from cluster.evaluate import voting_tables  # noqa: E402
from cluster.pipeline import dirs, evaluate_stage, extract_stage, train_stage  # noqa: E402
from cluster.storage import Storage  # noqa: E402
from distill.records import SHAPE_SCHEMA, UNIT_SCHEMA, KnowledgeUnits, Shape, table_to_shapes, table_to_units  # noqa: E402

METHODS = ("voting", "voting_nearest", "voting_views", "student", "student_units")
STUDENTS = ("student", "student_units")
PSB = ROOT.parent / "shared" / "data" / "labeled_psb"
DEFAULTS = [
    "data.source=psb",
    f"data.path={PSB}",
    "data.split=train",
    "eval.data.source=psb",
    f"eval.data.path={PSB}",
    "eval.data.split=test",
    "render.image_size=320",
    "teacher.name=simulated",
    "teacher.preset=glip_like",
    "progress=false",
    "cluster.backend=local",
    # PSB meshes of a category are not consistently posed: co-align them (distill/pose.py).
    "student.align=cube",
    # No re-scoring trigger of its own: the shipped defaults (train.bd_rounds=0, so FD+BD
    # is FD). To measure backward distillation pass e.g. train.bd_rounds=1
    # train.bd_trigger=epoch train.bd_epoch=15 train.rescore=...; bench/bd_variants.py
    # compares the rules branched from one FD trunk.
]


def load(storage: Storage, shapes_dir: str, units_dir: str) -> tuple[list[Shape], dict[str, KnowledgeUnits]]:
    shapes = table_to_shapes(storage.read_table(shapes_dir, schema=SHAPE_SCHEMA))
    return sorted(shapes, key=lambda s: s.shape_id), table_to_units(storage.read_table(units_dir, schema=UNIT_SCHEMA))


def link_run(root: Path, src: str, run: str, mode: str) -> None:
    """``run``'s distillation shapes and knowledge as links into the extraction run ``src``:
    its train half (``pre``, with its evaluated shapes) or its test half (``tta``)."""
    dst = root / run
    for old in (dst, *root.glob(f"{run}-generation_*")):  # and a self-training run's earlier generations
        if old.exists():
            shutil.rmtree(old)
    (dst / "knowledge").mkdir(parents=True)
    half = "" if mode == "pre" else "eval/"
    (dst / "shapes").symlink_to(root / src / f"{half}shapes", target_is_directory=True)
    (dst / "knowledge" / "round_0").symlink_to(root / src / f"{half}knowledge" / "round_0", target_is_directory=True)
    if mode == "pre":
        (dst / "eval").symlink_to(root / src / "eval", target_is_directory=True)


def job_student(argv: list[str], root: Path, src: str, seed: int, order: int, mode: str) -> dict[str, Any]:
    """One student through the job's train and evaluate stages → its summary."""
    run = f"{src}-{mode}-o{order}"
    link_run(root, src, run, mode)
    cfg = load_config(
        [
            *DEFAULTS,
            *argv,
            f"seed={seed}",
            f"train.order_seed={order}",
            f"run={run}",
            f"mode={mode}",
            f"storage.root={root}",
        ]
    )
    storage = Storage.from_config(cfg.storage)
    trained = train_stage(cfg, storage)
    evaluated = evaluate_stage(cfg, storage)
    fits = [trained, *(g["train"] for g in trained.get("generations", []))]  # self-training: every generation
    seconds = round(sum(s["seconds"] for t in fits for s in t["students"]), 1)
    return {
        m: {"mean": evaluated[m], "per_category": evaluated["per_category"][m], "seconds": seconds} for m in STUDENTS
    }


def run_seed(argv: list[str], seed: int, orders: list[int], modes: list[str], root: Path) -> dict[str, list[dict]]:
    """Extract once for ``seed``; → per mode, one result per order (votes and student)."""
    src = f"quality-s{seed}"
    cfg = load_config([*DEFAULTS, *argv, f"seed={seed}", f"run={src}", "mode=pre", f"storage.root={root}"])
    storage = Storage.from_config(cfg.storage)
    t0 = time.perf_counter()
    extract_stage(cfg, storage)
    extract_stage(cfg, storage, evaluated=True)
    test_shapes, test_units = load(storage, *dirs(cfg, evaluated=True))
    print(f"seed {seed}: knowledge in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    votes = {m: t.per_category() for m, t in voting_tables(test_shapes, test_units).items()}
    out: dict[str, list[dict]] = {mode: [] for mode in modes}
    for mode in modes:
        for order in orders:
            student = job_student(argv, root, src, seed, order, mode)
            out[mode].append({**{m: {"per_category": v} for m, v in votes.items()}, **student})
            print(f"seed {seed} order {order} {mode}: student {student['student']['mean']:.1f}, with the units "
                  f"{student['student_units']['mean']:.1f} ({student['student']['seconds']:.0f}s training)",
                  file=sys.stderr)  # fmt: skip
    return out


def aggregate(runs: list[dict]) -> dict[str, Any]:
    """Mean ± std over runs of each method's per-category and category-mean mIoU, and of
    the student's lead over ``voting_nearest``; the training time per student."""
    result: dict[str, Any] = {"per_category": {}, "runs": len(runs)}
    means: dict[str, list[float]] = {}
    for m in METHODS:
        cats: dict[str, list[float]] = {}
        for r in runs:
            for c, v in r[m]["per_category"].items():
                cats.setdefault(c, []).append(v)
        means[m] = [float(np.mean(list(r[m]["per_category"].values()))) for r in runs]
        result[m] = round(float(np.mean(means[m])), 2)
        result[f"{m}_std"] = round(float(np.std(means[m])), 2)
        result["per_category"][m] = {
            c: [round(float(np.mean(v)), 2), round(float(np.std(v)), 2)] for c, v in cats.items()
        }
    for m, suffix in (("student", ""), ("student_units", "_units")):
        lead = np.subtract(means[m], means["voting_nearest"])
        result[f"lead{suffix}"], result[f"lead{suffix}_std"] = round(float(lead.mean()), 2), round(float(lead.std()), 2)
        votes = result["per_category"]["voting_nearest"]
        result[f"below_vote{suffix}"] = sorted(c for c, (v, _) in result["per_category"][m].items() if v < votes[c][0])
    result["train_seconds"] = round(float(np.mean([r["student"]["seconds"] for r in runs])), 1)
    return result


def markdown(mode: str, agg: dict[str, Any], what: str) -> str:
    cats = sorted(agg["per_category"]["voting"])
    lines = [
        f"**{mode}** (mIoU, mean ± std over {what}; student − voting_nearest {agg['lead']:+.1f} ± {agg['lead_std']:.1f}, "
        f"student_units − voting_nearest {agg['lead_units']:+.1f} ± {agg['lead_units_std']:.1f}; "
        f"{agg['train_seconds']:.0f} s training a student)",
        "",
        "| category | " + " | ".join(METHODS) + " |",
        "|---|" + "---:|" * len(METHODS),
    ]
    for c in cats:
        cells = [agg["per_category"][m].get(c, [float("nan"), 0]) for m in METHODS]
        lines.append(f"| {c} | " + " | ".join(f"{v:.1f} ± {s:.1f}" for v, s in cells) + " |")
    lines.append(
        "| **mean over categories** | "
        + " | ".join(f"**{agg[m]:.1f} ± {agg[m + '_std']:.1f}**" for m in METHODS)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="init (and teacher) seeds")
    parser.add_argument("--orders", type=int, nargs="+", default=[100, 101], help="data-order seeds (train.order_seed)")
    parser.add_argument("--modes", nargs="+", default=["pre", "tta"], choices=["pre", "tta"])
    parser.add_argument("--root", default=str(ROOT / "bench" / "results" / "quality_runs"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1: two modes side by side)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    parser.add_argument(
        "--extract-only", action="store_true", help="extract the seeds' knowledge and stop (before side-by-side runs)"
    )
    parser.add_argument("overrides", nargs="*", help="config keys, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = load_config([*DEFAULTS, *args.overrides])
    vocabulary = "each dataset's own part names (no mapping)"
    if cfg.data.vocabulary:  # the mappings used, said (distill/vocab.py)
        vocabulary = f"shared concepts of {cfg.data.vocabulary}"
    print(f"vocabulary: {vocabulary}", file=sys.stderr)
    if args.extract_only:
        args.modes = []
    runs = [run_seed(args.overrides, seed, args.orders, args.modes, Path(args.root)) for seed in args.seeds]
    what = f"{len(args.seeds)} seed(s) × {len(args.orders)} order(s)"
    summary: dict[str, Any] = {}
    for mode in args.modes:
        agg = aggregate([r for per_seed in runs for r in per_seed[mode]])
        summary[mode] = agg
        print(markdown(mode, agg, what) + "\n")
    summary["seeds"], summary["orders"] = args.seeds, args.orders
    summary["overrides"] = args.overrides
    summary["vocabulary"] = vocabulary
    summary["minutes"] = round((time.perf_counter() - start) / 60, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    keys = (*METHODS, "lead", "lead_std", "student_std", "below_vote", "lead_units", "lead_units_std")
    keys += ("student_units_std", "below_vote_units", "train_seconds")
    print(json.dumps({m: {k: summary[m][k] for k in keys} for m in args.modes}))


if __name__ == "__main__":
    main()
