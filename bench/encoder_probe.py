"""Linear probe of a pretrained encoder against the same encoder at random initialisation.

A broken pretraining cannot hide behind distillation numbers here: on the procedural
corpus's ground truth (the **test** split, instance indices ≥ 1,000,000, which no
pretraining corpus of configs/encoder*.yaml reads), a per-category linear classifier is
fitted on the frozen per-point features of ``--train`` shapes a category and scored
(mIoU) on ``--test`` others (``distill.probe``). The pretrained encoder is read the way
the jobs read ``student.pretrained`` (``cluster.training.pretrained``: found, checked against the
student settings it was trained for, loaded whole into a student); the baseline is that
student's encoder at random initialisation, one per ``--seeds`` (the probe's shapes
are the same for both).

    python -m bench.encoder_probe --encoder encoder_psb              # a run of this storage
    python -m bench.encoder_probe --encoder runs/enc/encoder/encoder.pt --seeds 0 1 2

Prints a Markdown table, writes ``bench/results/encoder_probe.json``; the last line of
output is a one-line JSON summary (``probe_gain``: pretrained − random, mean over
categories, with a 95 % bootstrap interval over the test shapes).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS
from cluster.config import load_config
from cluster.store.storage import Storage
from cluster.training.pretrained import read_pretrained
from distill.config import DataConfig
from distill.metrics import category_mean_interval
from distill.probe import encoder_features, fit_linear, probe_miou
from distill.readers.registry import iter_items
from distill.samples import point_choice
from distill.student import build_student, load_pretrained_encoder
from distill.student.pretrained import check_encoder_bundle
from generation.procedural import ALL_CATEGORIES


def probe_shapes(categories: list[str], per_category: int, num_points: int, seed: int) -> dict[str, list]:
    """(points (N, 3), labels (N,), num_parts) of the first ``per_category`` test-split
    shapes of each category, resampled as the jobs resample."""
    data = DataConfig(source="procedural", categories=categories, split="test", per_category=per_category)
    out: dict[str, list] = {}
    for item in iter_items(data, seed):
        shape = item.load()
        choice = point_choice(shape.num_points, num_points, seed, shape.shape_id)
        out.setdefault(shape.category, []).append(
            (torch.from_numpy(shape.points[choice]).float(), torch.from_numpy(shape.labels[choice]), shape.num_parts)
        )
    return out


def probe(encoder: torch.nn.Module, shapes: dict[str, list], train: int) -> dict[str, list[float]]:
    """Per category: the probe's mIoU of each test shape (the first ``train`` shapes fit it)."""
    out = {}
    for category, items in shapes.items():
        clouds = [c for c, _, _ in items]
        labels = [y for _, y, _ in items]
        parts = items[0][2]
        feats = encoder_features(encoder, clouds)
        head = fit_linear(feats[:train], labels[:train], parts)
        out[category] = probe_miou(head, feats[train:], labels[train:], parts)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True, help="student.pretrained value: a run name or an encoder.pt path")
    ap.add_argument("--root", default="runs", help="storage.root the run lives in")
    ap.add_argument("--categories", nargs="*", default=list(ALL_CATEGORIES))
    ap.add_argument("--train", type=int, default=8, help="probe-training shapes a category")
    ap.add_argument("--test", type=int, default=8, help="scored shapes a category")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random encoders of the baseline")
    ap.add_argument("--out", default=str(RESULTS / "encoder_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()

    storage = Storage(args.root)
    bundle, where = read_pretrained(storage, args.encoder)
    cfg = load_config([f"storage.root={args.root}"])
    student = cfg.student
    if bundle.get("format"):
        student = replace(student, **{k: bundle[k] for k in ("backbone", "width", "k", "use_normals")})
    num_points = int(bundle.get("num_points", cfg.data.num_points))
    check_encoder_bundle(bundle, student, num_points, where)
    shapes = probe_shapes(args.categories, args.train + args.test, num_points, cfg.seed)

    pretrained = build_student(student, 1)
    load_pretrained_encoder(pretrained, bundle, where)
    rows: dict[str, dict[str, list[float]]] = {
        "pretrained": probe(copy.deepcopy(pretrained.encoder), shapes, args.train)
    }
    randoms = []
    for s in args.seeds:
        torch.manual_seed(s)
        randoms.append(probe(build_student(student, 1).encoder, shapes, args.train))
    # per test shape: the random encoders' mean, so the gain's interval is over shapes
    rows["random"] = {c: list(np.mean([r[c] for r in randoms], axis=0)) for c in shapes}
    random_means = [float(np.mean([np.mean(r[c]) for c in shapes])) for r in randoms]

    def mean(row: dict[str, list[float]]) -> float:
        return float(np.mean([np.mean(v) for v in row.values()]))

    gain = {c: np.asarray(rows["pretrained"][c]) - np.asarray(rows["random"][c]) for c in shapes}
    low, high = category_mean_interval(gain)
    print("| category | random | pretrained | gain |\n|---|---:|---:|---:|")
    for c in shapes:
        r, p = np.mean(rows["random"][c]), np.mean(rows["pretrained"][c])
        print(f"| {c} | {r:.1f} | {p:.1f} | {p - r:+.1f} |")
    print(f"| **mean** | {mean(rows['random']):.1f} ± {np.std(random_means):.1f} | {mean(rows['pretrained']):.1f} | "
          f"{mean(rows['pretrained']) - mean(rows['random']):+.1f} [{low:+.1f}, {high:+.1f}] |")  # fmt: skip
    summary = {
        "encoder": where,
        "shapes": bundle.get("shapes"),
        "epochs": bundle.get("epochs"),
        "random": round(mean(rows["random"]), 2),
        "random_std": round(float(np.std(random_means)), 2),
        "pretrained": round(mean(rows["pretrained"]), 2),
        "probe_gain": round(mean(rows["pretrained"]) - mean(rows["random"]), 2),
        "probe_gain_ci95": [round(low, 2), round(high, 2)],
        "per_category": {
            c: {
                "random": round(float(np.mean(rows["random"][c])), 2),
                "pretrained": round(float(np.mean(rows["pretrained"][c])), 2),
            }
            for c in shapes
        },
        "probe": {"train": args.train, "test": args.test, "seeds": args.seeds, "num_points": num_points},
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_category"}))
    return summary


if __name__ == "__main__":
    main()
