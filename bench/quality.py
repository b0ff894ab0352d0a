"""Quality benchmark: does the student beat the teacher's own pipeline?

For a labelled corpus and the *simulated* ``glip_like`` teacher (docs/design.md §4 — a stand-in
for a VLM, never presented as one), per category, mean ± std over init seeds × data orders,
every row of the job's evaluation (``cluster.passes.evaluate.METHODS``):

* teacher-only rows: ``voting`` (per point, PartSLIP-style sums of covering units),
  ``voting_nearest`` (uncovered points take their nearest covered point's label),
  ``voting_views`` (the vote with the units' evidence against, ``distill.evidence``) and
  ``voting_superpoints`` (PartSLIP's superpoint vote, ``distill.superpoints``);
* ``student``: the student alone, trained and scored by the jobs' own code — what a user
  gets on a new shape without running the teacher on it;
* ``student_units``: the student combined with each scored shape's units
  (``eval.units_weight``) — needs the teacher run on the scored shape.

The bar is the **best teacher-only row** on the scored shapes (highest mean over runs):
per mode the summary carries ``best_teacher`` (name, mean), and per student row
``lead_best`` ± ``lead_best_std`` (over runs) and ``lead_ci95``, a 95 % bootstrap interval
over the scored shapes (resampled within categories, ``distill.metrics``) of the lead
averaged over runs.

The student is the job's: the settings are the shipped preset (``--config psb``, overrides
after it), every run goes through ``cluster.pipeline.train_stage`` (the streaming
``PartSource``, its calibration and pose references, checkpoints, the configured backward
distillation and self-training) and ``evaluate_stage`` (the job's evaluation and
predictions table, which the per-shape figures are read back from), so a bug in the job
cannot hide from this benchmark. Knowledge is extracted once per seed (the simulated
teacher's noise follows the seed) and linked into one run folder per (mode, order).

Modes: ``pre`` distils on ``data`` (the train half) and scores ``eval.data`` (the test
half); ``tta`` distils on ``eval.data`` itself and scores it. Both score the same shapes,
so the rows compare. Checkpoints are fixed by the schedule (last epoch) or chosen on
teacher agreement (``train.select=val``): test labels are read only to score.

    python -m bench.quality                              # Labeled PSB sample, 3 seeds × 2 orders, pre + tta
    python -m bench.quality --seeds 0 --orders 100 --modes tta teacher.view_correlation=0

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

from bench.common import PSB, RESULTS
from cluster.config import load_config
from cluster.passes.evaluate import BASELINE_METHODS, METHODS, STUDENT_METHODS, baseline_predictions
from cluster.pipeline import evaluate_stage, extract_stage, train_stage
from cluster.store.paths import evaluated_tables
from cluster.store.storage import Storage
from distill.metrics import category_mean_interval, shape_miou
from distill.records import (
    PREDICTION_SCHEMA,
    SHAPE_SCHEMA,
    UNIT_SCHEMA,
    KnowledgeUnits,
    Shape,
    table_to_predictions,
    table_to_shapes,
    table_to_units,
)

DEFAULTS = [
    # The shipped preset: what is measured is what users run (configs/psb.yaml) ...
    "--config",
    "psb",
    # ... with the data where this checkout keeps it, and a quiet, local run.
    f"data.path={PSB}",
    f"eval.data.path={PSB}",
    "progress=false",
    "cluster.backend=local",
    # The preset's backward distillation and self-training are measured as shipped; to
    # measure others pass e.g. train.bd_rounds=1 train.bd_trigger=epoch train.bd_epoch=15
    # or train.relabel_rounds=1 (bench/bd_variants.py compares BD rules from one trunk).
]


def load(storage: Storage, shapes_dir: str, units_dir: str) -> tuple[list[Shape], dict[str, KnowledgeUnits]]:
    shapes = table_to_shapes(storage.read_table(shapes_dir, schema=SHAPE_SCHEMA))
    return sorted(shapes, key=lambda s: s.shape_id), table_to_units(storage.read_table(units_dir, schema=UNIT_SCHEMA))


def link_run(root: Path, src: str, run: str, mode: str) -> None:
    """``run``'s distillation shapes and knowledge as links into the extraction run ``src``:
    its train half (``pre``, with its evaluated shapes) or its test half (``tta``)."""
    dst = root / run
    if dst.exists():  # with a self-training run's earlier relabel rounds inside it
        shutil.rmtree(dst)
    (dst / "knowledge").mkdir(parents=True)
    half = "" if mode == "pre" else "eval/"
    (dst / "shapes").symlink_to(root / src / f"{half}shapes", target_is_directory=True)
    (dst / "knowledge" / "round_0").symlink_to(root / src / f"{half}knowledge" / "round_0", target_is_directory=True)
    if mode == "pre":
        (dst / "eval").symlink_to(root / src / "eval", target_is_directory=True)


def job_student(
    argv: list[str], root: Path, src: str, seed: int, order: int, mode: str, truth: dict[str, Shape]
) -> dict[str, Any]:
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
    fits = [trained, *(r["train"] for r in trained.get("relabel_rounds", []))]  # self-training: every round
    seconds = round(sum(s["seconds"] for t in fits for s in t["students"]), 1)
    per_shape = student_shape_scores(storage, run, truth)
    return {
        m: {
            "mean": evaluated[m],
            "per_category": evaluated["per_category"][m],
            "per_shape": per_shape[m],
            "seconds": seconds,
        }
        for m in STUDENT_METHODS
    }


def student_shape_scores(storage: Storage, run: str, truth: dict[str, Shape]) -> dict[str, dict[str, float]]:
    """Per student row, each scored shape's mIoU, read back from the job's predictions
    table (``<run>/<student>`` is ``student``, ``…+units`` is ``student_units``)."""
    out: dict[str, dict[str, float]] = {m: {} for m in STUDENT_METHODS}
    for p in table_to_predictions(storage.read_table(f"{run}/predictions", schema=PREDICTION_SCHEMA)):
        s = truth.get(p.shape_id)
        if s is not None and s.labels is not None:
            method = "student_units" if p.student.endswith("+units") else "student"
            out[method][p.shape_id] = shape_miou(p.labels, s.labels, s.num_parts)
    return out


def run_seed(argv: list[str], seed: int, orders: list[int], modes: list[str], root: Path) -> dict[str, list[dict]]:
    """Extract once for ``seed``; → per mode, one result per order (votes and student)."""
    src = f"quality-s{seed}"
    cfg = load_config([*DEFAULTS, *argv, f"seed={seed}", f"run={src}", "mode=pre", f"storage.root={root}"])
    storage = Storage.from_config(cfg.storage)
    t0 = time.perf_counter()
    extract_stage(cfg, storage)
    extract_stage(cfg, storage, evaluated=True)
    test_shapes, test_units = load(storage, *evaluated_tables(cfg))
    print(f"seed {seed}: knowledge in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    votes = teacher_rows(test_shapes, test_units, cfg.eval.units_negative)
    truth = {s.shape_id: s for s in test_shapes}
    category = {s.shape_id: s.category for s in test_shapes}
    out: dict[str, list[dict]] = {mode: [] for mode in modes}
    for mode in modes:
        for order in orders:
            student = job_student(argv, root, src, seed, order, mode, truth)
            out[mode].append({**votes, **student, "category": category})
            print(f"seed {seed} order {order} {mode}: student {student['student']['mean']:.1f}, with the units "
                  f"{student['student_units']['mean']:.1f} ({student['student']['seconds']:.0f}s training)",
                  file=sys.stderr)  # fmt: skip
    return out


def teacher_rows(shapes: list[Shape], units: dict[str, KnowledgeUnits], negative: float) -> dict[str, dict]:
    """Each teacher-only row's per-shape and per-category mIoU on the labelled ``shapes``,
    by the evaluation's own ``baseline_predictions``."""
    per_shape: dict[str, dict[str, float]] = {m: {} for m in BASELINE_METHODS}
    for s in shapes:
        if s.labels is None:
            continue
        u = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
        for m, pred in baseline_predictions(s, u, negative).items():
            per_shape[m][s.shape_id] = shape_miou(pred, s.labels, s.num_parts)
    category = {s.shape_id: s.category for s in shapes}
    return {m: {"per_shape": v, "per_category": by_category(v, category)} for m, v in per_shape.items()}


def by_category(per_shape: dict[str, float], category: dict[str, str]) -> dict[str, float]:
    cats: dict[str, list[float]] = {}
    for shape_id, v in per_shape.items():
        cats.setdefault(category[shape_id], []).append(v)
    return {c: float(np.mean(v)) for c, v in sorted(cats.items())}


def best_teacher_leads(runs: list[dict], result: dict[str, Any], category: dict[str, str]) -> None:
    """The bar: the teacher-only row with the highest mean over runs; per student row the
    lead over it (mean ± std over runs) and a 95 % interval over the scored shapes of the
    lead averaged over runs (``distill.metrics.category_mean_interval``)."""
    best = max(BASELINE_METHODS, key=lambda m: result[m])
    result["best_teacher"] = {"name": best, "mean": result[best]}
    for m in STUDENT_METHODS:
        leads = [
            np.mean(list(r[m]["per_category"].values())) - np.mean(list(r[best]["per_category"].values())) for r in runs
        ]
        result.setdefault("lead_best", {})[m] = round(float(np.mean(leads)), 2)
        result.setdefault("lead_best_std", {})[m] = round(float(np.std(leads)), 2)
        shapes = sorted(set.intersection(*(set(r[m]["per_shape"]) for r in runs)))
        per_cat: dict[str, list[float]] = {}
        for shape_id in shapes:
            d = np.mean([r[m]["per_shape"][shape_id] - r[best]["per_shape"][shape_id] for r in runs])
            per_cat.setdefault(category[shape_id], []).append(float(d))
        if per_cat:
            low, high = category_mean_interval({c: np.array(v) for c, v in per_cat.items()})
            result.setdefault("lead_ci95", {})[m] = [round(low, 2), round(high, 2)]


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
    if all("category" in r for r in runs):  # per-shape scores: the bar and its interval
        best_teacher_leads(runs, result, runs[0]["category"])
        best = result["per_category"][result["best_teacher"]["name"]]
        result["below_best_5"] = {
            m: sorted(c for c, (v, _) in result["per_category"][m].items() if v < best[c][0] - 5)
            for m in STUDENT_METHODS
        }
    result["train_seconds"] = round(float(np.mean([r["student"]["seconds"] for r in runs])), 1)
    return result


def markdown(mode: str, agg: dict[str, Any], what: str) -> str:
    cats = sorted(agg["per_category"]["voting"])
    best, lead, std, ci = agg["best_teacher"]["name"], agg["lead_best"], agg["lead_best_std"], agg["lead_ci95"]
    leads = "; ".join(
        f"{m} − {best} {lead[m]:+.1f} ± {std[m]:.1f} (95 % over shapes [{ci[m][0]:+.1f}, {ci[m][1]:+.1f}])"
        for m in STUDENT_METHODS
        if m in lead
    )
    lines = [
        f"**{mode}** (mIoU, mean ± std over {what}; best teacher-only row: {best}; {leads}; "
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
    parser.add_argument("--root", default=str(RESULTS / "quality_runs"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1: two modes side by side)")
    parser.add_argument("--out", default=str(RESULTS / "quality.json"))
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
    root = Path(args.root).resolve()  # the runs link into the extraction runs by absolute paths
    runs = [run_seed(args.overrides, seed, args.orders, args.modes, root) for seed in args.seeds]
    what = f"{len(args.seeds)} seed(s) × {len(args.orders)} order(s)"
    summary: dict[str, Any] = {"teacher": {"view_correlation": cfg.teacher.view_correlation}}
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
    keys = (*METHODS, "best_teacher", "lead_best", "lead_best_std", "lead_ci95", "below_best_5", "student_std")
    keys += ("student_units_std", "lead", "lead_units", "train_seconds")
    print(json.dumps({"teacher": summary["teacher"], **{m: {k: summary[m][k] for k in keys} for m in args.modes}}))


if __name__ == "__main__":
    main()
