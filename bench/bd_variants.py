"""Backward-distillation score rules, compared on one forward-distillation run.

    python bench/bd_variants.py --mode tta --branch 12 --variants agreement labelnorm control

One FD student is trained on the Labeled PSB sample (simulated ``glip_like`` units, cached
by ``bench/student.py``), its state kept after epoch ``--branch``. From that state, each
variant re-scores every unit with a rule of its own and trains on to the last epoch, so
the variants differ by the new scores alone (``control`` keeps the teacher's). Rules, per
unit k with teacher score c, label y, and agreement a = the fraction of its points the
student labels y:

* ``agreement``   a (the paper)
* ``labelnorm``   a / median a over the units of the same category and part, clipped to 1
* ``candidates``  a, with the student's label at each point chosen only among the labels
                  of the units covering it (a unit alone on its points keeps 1)
* ``recall``      of the student's y points among the points the view's units cover, the
                  share inside k
* ``prune``       c, or 0 when labelnorm < 0.5
* ``gentle``      c · (0.5 + 0.5 · labelnorm)
* ``max``         max(c, a)
* ``control``     c
* ``oracle``      the unit's true precision (the share of its points whose ground-truth
                  label is y): not a method, the upper bound of any re-scoring rule

``--rescale`` multiplies every new score by one constant so that the size-weighted mean
score stays the teacher's (Adam remembers the old gradient scale for ~1000 steps).
``--diagnose`` prints, instead of training, how well the teacher's score and the
student's agreement pick out the right units (a unit is right when ≥ 30 % of its points
carry its label): ROC AUC and correlation with the unit's true precision.

The last line of output is a JSON summary; the FD trunk is cached under bench/results/cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from student import RESULTS, load_psb, split, teacher_units, vote_table  # noqa: E402

from distill.config import StudentConfig, TrainConfig  # noqa: E402
from distill.rescore import unit_hits  # noqa: E402
from distill.student import build_student  # noqa: E402
from distill.training import (  # noqa: E402
    LabelSpace,
    _sample_units,
    collate,
    distil,
    evaluate,
    forward_logits,
    prepare_samples,
    recalibrate_batchnorm,
)

RULES = ("agreement", "candidates", "labelnorm", "recall", "prune", "gentle", "max", "control", "oracle")


@torch.no_grad()
def snapshot_predictions(
    model: torch.nn.Module, samples: list, space: LabelSpace
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample, the snapshot's label of every point: (plain argmax, argmax among the
    labels of the units covering the point), both (N,) in the category's label indices."""
    recalibrate_batchnorm(model, samples, "cpu", space)  # as distil does before re-scoring
    model.eval()
    out = []
    for s in samples:
        off, parts = int(space.offsets[s.category]), len(space.part_names[s.category])
        logits = forward_logits(model, collate([s]), space)[0, :, off : off + parts].numpy()
        u = _sample_units(s, space, s.unit_score.numpy())
        offered = np.zeros(logits.shape, bool)
        for k in range(len(u)):
            offered[u.unit_points(k), u.label[k]] = True
        among = np.where(offered, logits, -np.inf).argmax(1)
        out.append((logits.argmax(1), np.where(offered.any(1), among, logits.argmax(1))))
    return out


def unit_stats(
    samples: list, preds: list, space: LabelSpace, truth: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Per shape id: teacher score, label, size, agreement (plain and among the offered
    labels), recall and true precision of every unit (``preds``: ``snapshot_predictions``;
    ``truth``: each shape's ground-truth point labels)."""
    out = {}
    for s, (pred, among) in zip(samples, preds):
        u = _sample_units(s, space, s.unit_score.numpy())
        labels = truth[s.shape_id]
        hits_among, _ = unit_hits(u, among)
        hits, sizes = unit_hits(u, pred)
        recall = np.zeros(len(u))
        for v in np.unique(u.view):
            ks = np.flatnonzero(u.view == v)
            covered = np.unique(np.concatenate([u.unit_points(k) for k in ks]))
            for k in ks:
                mine = covered[pred[covered] == u.label[k]]
                recall[k] = np.isin(mine, u.unit_points(k)).mean() if len(mine) else 0.0
        out[s.shape_id] = {
            "c": s.unit_score.numpy().astype(np.float64),
            "label": u.label,
            "category": np.full(len(u), s.category),
            "size": sizes.astype(np.float64),
            "a": np.where(sizes > 0, hits / np.maximum(sizes, 1), 0.0),
            "candidates": np.where(sizes > 0, hits_among / np.maximum(sizes, 1), 0.0),
            "recall": recall,
            "precision": np.array(
                [float((labels[u.unit_points(k)] == u.label[k]).mean()) if n else 0.0 for k, n in enumerate(sizes)]
            ),
        }
    return out


def new_scores(rule: str, stats: dict[str, dict[str, np.ndarray]], rescale: bool) -> dict[str, np.ndarray]:
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for st in stats.values():
        for c, y in set(zip(st["category"].tolist(), st["label"].tolist())):
            groups.setdefault((c, y), []).append(st["a"][(st["category"] == c) & (st["label"] == y)])
    median = {k: max(float(np.median(np.concatenate(v))), 1e-3) for k, v in groups.items()}
    out = {}
    for sid, st in stats.items():
        m = np.array([median[(c, y)] for c, y in zip(st["category"].tolist(), st["label"].tolist())])
        norm = np.clip(st["a"] / np.maximum(m, 1e-3), 0.0, 1.0) if len(m) else st["a"]
        c = st["c"]
        out[sid] = {
            "agreement": st["a"],
            "candidates": st["candidates"],
            "labelnorm": norm,
            "recall": st["recall"],
            "prune": np.where(norm >= 0.5, c, 0.0),
            "gentle": c * (0.5 + 0.5 * norm),
            "max": np.maximum(c, st["a"]),
            "control": c,
            "oracle": st["precision"],
        }[rule]
    if rescale:
        before = sum(float((st["c"] * st["size"]).sum()) for st in stats.values())
        after = sum(float((out[k] * st["size"]).sum()) for k, st in stats.items())
        out = {k: v * before / max(after, 1e-9) for k, v in out.items()}
    return {k: v.astype(np.float32) for k, v in out.items()}


def auc(right: np.ndarray, score: np.ndarray) -> float:
    r = rankdata(score)
    n1, n0 = right.sum(), (~right).sum()
    return float((r[right].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["pre", "tta"], default="tta")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--branch", type=int, default=12, help="re-score after this epoch")
    p.add_argument("--variants", nargs="+", choices=RULES, default=["agreement", "labelnorm", "control"])
    p.add_argument("--rescale", action="store_true")
    p.add_argument("--diagnose", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(2)
    shapes = load_psb(0)
    units = teacher_units(shapes, 320)
    train, test = split(shapes, a.mode)
    plain, near = vote_table(test, units)
    space = LabelSpace.from_shapes(train)
    samples = prepare_samples(train, units, space)
    student = StudentConfig(backbone="pointnet2", width=32, k=16)
    cfg = TrainConfig(epochs=a.epochs, batch_size=16, bd_rounds=0)
    cache = RESULTS / "cache" / f"bd_trunk_{a.mode}_s{a.seed}_e{a.epochs}_b{a.branch}.pt"
    if cache.exists():
        state, res = torch.load(cache, weights_only=False)
    else:
        kept = {}
        torch.manual_seed(a.seed)
        model = build_student(student, space.num_slots, space.num_categories)
        fd = distil(
            model, samples, space, cfg, seed=a.seed,
            on_epoch_end=lambda st: kept.update(state=st.state_dict()) if st.epoch == a.branch else None,
        )  # fmt: skip
        state, res = kept["state"], {"fd": evaluate(fd.model, test, "cpu", space=space).category_mean()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((state, res), cache)
    print(f"vote {plain.category_mean():.1f}  vote+nearest {near.category_mean():.1f}  FD {res['fd']:.1f}", flush=True)
    snapshot = build_student(student, space.num_slots, space.num_categories)
    snapshot.load_state_dict(state["model"])
    truth = {s.shape_id: s.labels for s in train}
    stats = unit_stats(samples, snapshot_predictions(snapshot, samples, space), space, truth)
    if a.diagnose:
        c, agree, prec = ([float(x) for st in stats.values() for x in st[key]] for key in ("c", "a", "precision"))
        prec_a = np.array(prec)
        right = prec_a >= 0.3
        res.update(
            auc_teacher=auc(right, np.array(c)),
            auc_agreement=auc(right, np.array(agree)),
            corr_teacher=float(np.corrcoef(c, prec_a)[0, 1]),
            corr_agreement=float(np.corrcoef(agree, prec_a)[0, 1]),
        )
    for rule in [] if a.diagnose else a.variants:
        start = time.perf_counter()
        scores = new_scores(rule, stats, a.rescale)
        branched = copy.deepcopy(state)
        branched.update(scores=scores, round=1, round_start=len(branched["losses"]))
        torch.manual_seed(a.seed)
        model = build_student(student, space.num_slots, space.num_categories)
        after = TrainConfig(epochs=a.epochs, batch_size=16, bd_rounds=1, bd_trigger="epoch", bd_epoch=10**6)
        result = distil(model, samples, space, after, seed=a.seed, resume=branched)
        res[rule] = evaluate(result.model, test, "cpu", space=space).category_mean()
        mean = float(np.mean(np.concatenate(list(scores.values()))))
        print(f"{rule}@{a.branch}: {res[rule]:.1f}  (mean score {mean:.3f}, {time.perf_counter() - start:.0f}s)")
    print(json.dumps({"args": vars(a), "vote": plain.category_mean(), "vote_nearest": near.category_mean(), **res}))


if __name__ == "__main__":
    main()
