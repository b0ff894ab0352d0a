"""Capacity check: can the student fit *clean* labels of the shapes it is scored on?

The student is trained, in TTA fashion, on the ground-truth labels of the Labeled PSB test
half (one knowledge unit per part present in a shape: exactly the part's points, score 1)
and scored on the same shapes. No teacher is involved, so the score is a ceiling on what
distillation can reach with this network, schedule and data: a student that scores 60
here cannot reach 85 from noisy units whatever the re-scoring rule. Training goes through
``distil`` and the same sample preparation, calibration and pose references as the jobs
(the in-memory source: the units are made here, not extracted).

    python bench/capacity.py                                   # the shipped student
    python bench/capacity.py --variant wide student.width=64 train.epochs=100

Each ``--variant NAME key=value ...`` run is one row; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULTS, load  # noqa: E402
from cluster.config import load_config  # noqa: E402
from cluster.pipeline import dirs, extract_stage  # noqa: E402
from cluster.storage import Storage  # noqa: E402
from distill.labels import LabelSpace  # noqa: E402
from distill.passes import evaluate  # noqa: E402
from distill.records import KnowledgeUnits, Shape  # noqa: E402
from distill.samples import prepare_samples  # noqa: E402
from distill.student import build_student  # noqa: E402
from distill.training import distil  # noqa: E402


def truth_units(shape: Shape) -> KnowledgeUnits:
    """One unit per part present in ``shape``: its labelled points, score 1."""
    if shape.labels is None:
        raise ValueError(f"{shape.shape_id} has no labels: the capacity check needs labelled shapes")
    parts = [int(p) for p in np.unique(shape.labels) if p >= 0]
    sets = [np.flatnonzero(shape.labels == p) for p in parts]
    return KnowledgeUnits.from_lists(shape.shape_id, [0] * len(parts), parts, [1.0] * len(parts), sets, "truth")


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
    parser.add_argument("--root", default=str(ROOT / "bench" / "results" / "quality_runs"))
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
    shapes, _ = load(storage, *dirs(cfg, evaluated=True))
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
        print(f"{name}: {rows[name]['miou']:.1f} ± {rows[name]['std']:.1f} mIoU ({rows[name]['seconds']:.0f} s) {overrides}")
    out = ROOT / "bench" / "results" / "capacity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({k: {"miou": v["miou"], "std": v["std"], "seconds": v["seconds"]} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
