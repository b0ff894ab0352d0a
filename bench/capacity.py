"""Capacity check: can the student fit *clean* labels of the shapes it is scored on?

The student is trained, in TTA fashion, on the ground-truth labels of the Labeled PSB test
half (one knowledge unit per part present in a shape: exactly the part's points, score 1)
and scored on the same shapes. No teacher is involved, so the score is a ceiling on what
distillation can reach with this network, schedule and data: a student that scores 60
here cannot reach 85 from noisy units whatever the re-scoring rule. Training goes through
``distil`` and the same sample preparation, calibration and pose references as the jobs
(the in-memory source: the units are made here, not extracted).

    python -m bench.capacity                                   # the shipped student
    python -m bench.capacity --variant wide student.width=64 train.epochs=100

Each ``--variant NAME key=value ...`` run is one row; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.common import RESULTS, truth_units
from bench.quality import DEFAULTS, load
from cluster.config import load_config
from cluster.pipeline import extract_stage
from cluster.store.paths import evaluated_tables
from cluster.store.storage import Storage
from distill.labels import LabelSpace
from distill.passes import evaluate
from distill.records import Shape
from distill.samples import prepare_samples
from distill.student import build_student
from distill.training import distil


def fit_and_score(argv: list[str], shapes: list[Shape], seed: int) -> tuple[float, float, dict[str, float]]:
    """Train on the truth of ``shapes`` and score them → (category mIoU, seconds, per category)."""
    cfg = load_config([*DEFAULTS, *argv, f"seed={seed}"])
    space = LabelSpace.from_shapes(shapes)
    units = {s.shape_id: truth_units(s) for s in shapes}
    samples = prepare_samples(shapes, units, space, cfg.data.num_points, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_student(cfg.student, space.num_slots, space.num_categories)
    start = time.perf_counter()
    result = distil(model, samples, space, cfg.train, "cpu", cfg.seed)
    seconds = time.perf_counter() - start
    table = evaluate(result.model, shapes, "cpu", cfg.train.batch_size, space)
    return table.category_mean(), seconds, table.per_category()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--root", default=str(RESULTS / "quality_runs"))
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), help="a named row and its overrides"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    variants = args.variant or [["shipped"]]
    # The shapes: the quality benchmark's test half (extracted there, or here the first time).
    cfg = load_config([*DEFAULTS, "seed=0", "run=quality-s0", "mode=pre", f"storage.root={args.root}"])
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage, evaluated=True)
    shapes, _ = load(storage, *evaluated_tables(cfg))
    rows = {}
    for name, *overrides in variants:
        runs = [fit_and_score(overrides, shapes, seed) for seed in args.seeds]
        miou = [r[0] for r in runs]
        rows[name] = {
            "overrides": overrides,
            "miou": round(float(np.mean(miou)), 2),
            "std": round(float(np.std(miou)), 2),
            "seconds": round(float(np.mean([r[1] for r in runs])), 1),
            "per_category": {c: round(float(np.mean([r[2][c] for r in runs])), 1) for c in runs[0][2]},
        }
        print(
            f"{name}: {rows[name]['miou']:.1f} ± {rows[name]['std']:.1f} mIoU ({rows[name]['seconds']:.0f} s) {overrides}"
        )
    out = RESULTS / "capacity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({k: {"miou": v["miou"], "std": v["std"], "seconds": v["seconds"]} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
