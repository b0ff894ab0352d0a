"""Backward-distillation re-scoring rules, side by side, branched from one FD trunk.

    python -m bench.bd_variants --modes tta pre --seeds 0 1 2 \\
        --variants control agreement crossfit crossfit_point oracle oracle_point

The data are the quality benchmark's (``bench/quality.py``: the Labeled PSB sample, the
simulated ``glip_like`` teacher seeded by the run's seed, 320² renders, PointNet++ 32 with
``student.align=cube``; Pre distils on each category's first half and TTA on the second,
both score the second half). Per mode and seed, one forward-distillation trunk is trained
up to epoch ``--branch`` (of ``--epochs``, the schedule of the whole run) and cached under
``bench/results/cache``; the cross-fitted snapshots (``--folds`` trunks, each on the units
outside its fold, ``--crossfit-by view|shape``) likewise. From the trunk's state each
variant re-scores every unit with its rule and trains on to the last epoch, so the
variants differ by the new scores alone. Rules (``distill.rescore``; per unit k with
teacher score c, label y):

* ``control``         c: no re-scoring, i.e. the FD-only student
* ``agreement``       the share of k's points the trunk labels y (the paper)
* ``crossfit``        the same, from the snapshot that never trained on k
* ``point``           each (point, unit) pair weighted by the trunk's probability of y there
* ``crossfit_point``  the same, from the snapshot that never trained on k
* ``oracle``          k's true precision (reads the truth: the bound of any unit rule)
* ``oracle_point``    each pair weighted 1 if the point's true label is y, else 0 (reads the
                      truth: the bound of any pair rule; it removes box bleed entirely)
* ``<rule>_balanced`` a rule, then rescaled per part so that every part keeps the
                      score mass Σ c·|k| it had (``distill.rescore.balance_part_mass``)

``--output mask`` runs everything on the simulated teacher's masks (little box bleed).
Prints a table per mode (seeds, mean ± std, mean over categories) and the correlation of
each rule's unit scores with the true precision; results accumulate in
``bench/results/bd_variants.json`` (a re-run skips finished branches); the last line of
output is a JSON summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS
from bench.quality import DEFAULTS, load
from cluster.config import load_config
from cluster.passes.evaluate import voting_tables
from cluster.pipeline import extract_stage
from cluster.store.paths import distill_tables, evaluated_tables
from cluster.store.storage import Storage
from distill.backward import predict_probs, rescore_with_rule, units_of
from distill.crossfit import train_fold_snapshots, unit_folds
from distill.labels import LabelSpace
from distill.passes import evaluate, recalibrate_batchnorm
from distill.rescore import balance_part_mass, split_pair_weights, unit_precision
from distill.samples import prepare_samples
from distill.student import build_student
from distill.training import distil

RULES = (
    "control", "agreement", "crossfit", "point", "crossfit_point", "oracle", "oracle_point",
    "agreement_balanced", "crossfit_balanced", "point_balanced", "oracle_balanced",
)  # fmt: skip
CACHE = RESULTS / "cache"
TAG = "wo3"  # wo2: whole-object box survives the 98 % rule; wo3: + PSB Airplane engine kept (issue 13 vocabulary)


def setup(seed: int, output: str, mode: str) -> dict[str, Any]:
    cfg = load_config(
        [*DEFAULTS, f"teacher.output={output}", f"seed={seed}", f"run={TAG}-{output}-s{seed}", "mode=pre",
         f"storage.root={CACHE / 'bd_runs'}"]
    )  # fmt: skip
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage)
    extract_stage(cfg, storage, evaluated=True)
    train_shapes, train_units = load(storage, *distill_tables(cfg))
    test_shapes, test_units = load(storage, *evaluated_tables(cfg))
    shapes, units = (train_shapes, train_units) if mode == "pre" else (test_shapes, test_units)
    space = LabelSpace.from_shapes(shapes)
    samples = prepare_samples(shapes, units, space, cfg.data.num_points, cfg.seed)
    return {"cfg": cfg, "space": space, "samples": samples, "test": test_shapes, "test_units": test_units}


def new_model(d: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(d["cfg"].seed)
    return build_student(d["cfg"].student, d["space"].num_slots, d["space"].num_categories)


def trunk(d: dict[str, Any], a: argparse.Namespace, key: str) -> dict[str, Any]:
    """The FD state after epoch ``--branch`` (cached)."""
    path = CACHE / f"bd_trunk_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    cfg = replace(d["cfg"].train, epochs=a.epochs, bd_rounds=0)
    kept: dict[str, Any] = {}

    def stop(st: Any) -> bool:
        if st.epoch == a.branch:
            kept["state"] = st.state_dict()
        return st.epoch >= a.branch

    t0 = time.perf_counter()
    distil(new_model(d), d["samples"], d["space"], cfg, "cpu", d["cfg"].seed, on_epoch_end=stop)
    print(f"  trunk {key}: {a.branch} epochs in {time.perf_counter() - t0:.0f}s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept["state"], path)
    return kept["state"]


def fold_snapshots(d: dict[str, Any], a: argparse.Namespace, key: str) -> tuple[list[torch.nn.Module], dict]:
    """The cross-fitted snapshots after epoch ``--branch`` (cached) and the unit folds."""
    cfg = replace(d["cfg"].train, epochs=a.epochs, bd_rounds=0)
    folds = unit_folds(d["samples"], d["space"], a.folds, a.crossfit_by, d["cfg"].seed)
    path = CACHE / f"bd_folds_{key}_{a.crossfit_by}{a.folds}.pt"
    models = [new_model(d) for _ in range(a.folds)]
    if path.exists():
        for m, st in zip(models, torch.load(path, weights_only=False)):
            m.load_state_dict(st)
        return models, folds
    t0 = time.perf_counter()
    models = train_fold_snapshots(
        new_model(d), d["samples"], d["space"], cfg, a.branch, "cpu", d["cfg"].seed, folds, a.folds, a.crossfit_by
    )
    print(f"  {a.folds} {a.crossfit_by} folds {key}: {time.perf_counter() - t0:.0f}s", flush=True)
    torch.save([m.state_dict() for m in models], path)
    return models, folds


def rule_scores(
    rule: str, d: dict[str, Any], state: dict[str, Any], probs: dict[str, list], folds: dict | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    samples, space = d["samples"], d["space"]
    if rule.endswith("_balanced"):  # the unit rule, then every part keeps its score mass
        scores, pairs = rule_scores(rule.removesuffix("_balanced"), d, state, probs, folds)
        ids = [s.shape_id for s in samples]
        balanced = balance_part_mass(
            [s.unit_slot.numpy() for s in samples], [np.diff(s.unit_offsets.numpy()) for s in samples],
            [state["scores"][i] for i in ids], [scores[i] for i in ids],
        )  # fmt: skip
        return dict(zip(ids, balanced)), pairs  # a pair rule keeps its relative pair weights
    if rule == "control":
        return {k: v.copy() for k, v in state["scores"].items()}, {}
    if rule in ("oracle", "oracle_point"):
        scores, pairs = {}, {}
        for s in samples:
            u = units_of(s, space)
            truth = s.labels.numpy()
            if rule == "oracle":
                scores[s.shape_id] = unit_precision(u, truth)
            else:
                hit = (truth[u.point_idx] == np.repeat(u.label, np.diff(u.offsets))).astype(np.float32)
                scores[s.shape_id], pairs[s.shape_id] = split_pair_weights(u, hit)
        return scores, pairs
    source = "folds" if rule.startswith("crossfit") else "trunk"
    scores, pairs = rescore_with_rule(
        rule, [], samples, space, folds if source == "folds" else None, probs=probs[source]
    )
    return scores, pairs or {}


def precision_corr(d: dict[str, Any], scores: dict[str, np.ndarray]) -> float:
    """Correlation over all units of a rule's scores with the units' true precision."""
    got, true = [], []
    for s in d["samples"]:
        u = units_of(s, d["space"])
        got.append(scores[s.shape_id])
        true.append(unit_precision(u, s.labels.numpy()))
    g, t = np.concatenate(got), np.concatenate(true)
    return float(np.corrcoef(g, t)[0, 1]) if g.std() > 0 else float("nan")


def run(a: argparse.Namespace, mode: str, seed: int, results: dict[str, Any]) -> None:
    key = f"{TAG}_{a.output}_{mode}_s{seed}_e{a.epochs}_b{a.branch}"
    todo = [r for r in a.variants if f"{key}/{r}" not in results or a.force]
    if not todo:
        return
    d = setup(seed, a.output, mode)
    vote = voting_tables(d["test"], d["test_units"])
    results[f"{key}/voting_nearest"] = {"miou": vote["voting_nearest"].category_mean()}
    state = trunk(d, a, key)
    snapshot = new_model(d)
    snapshot.load_state_dict(state["model"])
    recalibrate_batchnorm(snapshot, d["samples"], "cpu", d["space"], d["cfg"].train.batch_size)  # as distil does
    probs: dict[str, list] = {"trunk": [predict_probs(snapshot, d["samples"], "cpu", d["space"])]}
    folds = None
    if any(r.startswith("crossfit") for r in todo):  # includes crossfit_balanced
        models, folds = fold_snapshots(d, a, key)
        probs["folds"] = [predict_probs(m, d["samples"], "cpu", d["space"]) for m in models]
    after = replace(d["cfg"].train, epochs=a.epochs, bd_rounds=1, bd_trigger="epoch", bd_epoch=10**6)
    for rule in todo:
        t0 = time.perf_counter()
        scores, pairs = rule_scores(rule, d, state, probs, folds)
        branched = copy.deepcopy(state)
        branched.update(scores=scores, pair_weights=pairs, round=1, round_start=len(branched["losses"]))
        result = distil(new_model(d), d["samples"], d["space"], after, "cpu", d["cfg"].seed, resume=branched)
        table = evaluate(result.model, d["test"], "cpu", d["cfg"].train.batch_size, d["space"])
        results[f"{key}/{rule}"] = {
            "miou": table.category_mean(),
            "per_category": table.per_category(),
            "corr_precision": precision_corr(d, scores),
            "mean_score": float(np.mean(np.concatenate(list(scores.values())))),
            "seconds": time.perf_counter() - t0,
        }
        r = results[f"{key}/{rule}"]
        print(
            f"  {mode} seed {seed} {rule:15s} {r['miou']:5.1f}  corr(score, precision) {r['corr_precision']:.3f}  "
            f"mean score {r['mean_score']:.3f}  ({r['seconds']:.0f}s)",
            flush=True,
        )
        save(a, results)


def vote_check(a: argparse.Namespace, mode: str, seed: int, results: dict[str, Any]) -> None:
    """No training: the vote (+ nearest) on the distillation shapes' own units under each
    rule's scores, and how the wrong (point, unit) pairs split into box bleed (inside a
    unit whose majority label is right) and wrong units. Snapshot rules use the cached
    trunk / folds when they exist."""
    from distill.metrics import MIoUTable
    from distill.records import KnowledgeUnits
    from distill.voting import vote_nearest

    d = setup(seed, a.output, mode)
    key = f"{TAG}_{a.output}_{mode}_s{seed}_e{a.epochs}_b{a.branch}"
    samples, space = d["samples"], d["space"]
    probs: dict[str, list] = {}
    trunk_path = CACHE / f"bd_trunk_{key}.pt"
    if trunk_path.exists():
        snap = new_model(d)
        snap.load_state_dict(torch.load(trunk_path, weights_only=False)["model"])
        recalibrate_batchnorm(snap, samples, "cpu", space, d["cfg"].train.batch_size)
        probs["trunk"] = [predict_probs(snap, samples, "cpu", space)]
    folds = None
    if (CACHE / f"bd_folds_{key}_{a.crossfit_by}{a.folds}.pt").exists():
        models, folds = fold_snapshots(d, a, key)
        probs["folds"] = [predict_probs(m, samples, "cpu", space) for m in models]
    rules = ["control", "oracle", "oracle_point"]
    rules += ["agreement", "point"] if "trunk" in probs else []
    rules += ["crossfit", "crossfit_point"] if "folds" in probs else []
    state = {"scores": {s.shape_id: s.unit_score.numpy() for s in samples}}
    bleed = wrong_unit = pairs = 0
    for s in samples:
        u = units_of(s, space)
        truth = s.labels.numpy()
        prec = np.repeat(unit_precision(u, truth), np.diff(u.offsets))
        wrong = truth[u.point_idx] != np.repeat(u.label, np.diff(u.offsets))
        bleed += int((wrong & (prec >= 0.5)).sum())
        wrong_unit += int((wrong & (prec < 0.5)).sum())
        pairs += len(wrong)
    out: dict[str, Any] = {
        "wrong_pairs": (bleed + wrong_unit) / pairs,
        "bleed_share_of_wrong": bleed / max(bleed + wrong_unit, 1),
    }
    for rule in rules:
        scores, rel = rule_scores(rule, d, state, probs, folds)
        table = MIoUTable()
        for s in samples:
            u = units_of(s, space)
            w = np.repeat(scores[s.shape_id], np.diff(u.offsets)) * (rel[s.shape_id] if rel else 1.0)
            # The vote sums scores per (point, part): per-pair weights enter as a unit per pair.
            n = len(u.point_idx)
            per_pair = KnowledgeUnits(
                u.shape_id, np.zeros(n, np.int64), np.repeat(u.label, np.diff(u.offsets)),
                w.astype(np.float32), u.point_idx, np.arange(n + 1, dtype=np.int64),
            )  # fmt: skip
            pred = vote_nearest(per_pair, s.points.numpy(), len(space.part_names[s.category]))
            table.add(
                s.shape_id, space.categories[s.category], pred, s.labels.numpy(), len(space.part_names[s.category])
            )
        out[rule] = table.category_mean()
    results[f"{key}/votes"] = out
    path = RESULTS / "bd_votes.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged[f"{key}/votes"] = out
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    print(
        f"votes {key}: "
        + "  ".join(f"{k} {v:.3f}" if k.startswith(("wrong", "bleed")) else f"{k} {v:.1f}" for k, v in out.items()),
        flush=True,
    )


def save(a: argparse.Namespace, results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bd_variants.json"
    merged = json.loads(path.read_text()) if path.exists() else {}  # another run may have added keys
    merged.update(results)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")


def summary(a: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in a.modes:
        rows = {}
        for rule in ["voting_nearest", *a.variants]:
            vals = {
                s: results[k]["miou"]
                for s in a.seeds
                if (k := f"{TAG}_{a.output}_{mode}_s{s}_e{a.epochs}_b{a.branch}/{rule}") in results
            }
            if vals:
                rows[rule] = vals
        print(f"\n**{mode}** ({a.output} units, re-scored after epoch {a.branch} of {a.epochs}; category mIoU)\n")
        print("| rule | " + " | ".join(f"seed {s}" for s in a.seeds) + " | mean ± std | Δ vs control |")
        print("|---|" + "---:|" * (len(a.seeds) + 2))
        control = rows.get("control", {})
        for rule, vals in rows.items():
            mean, std = float(np.mean(list(vals.values()))), float(np.std(list(vals.values())))
            both = [s for s in vals if s in control]
            delta = float(np.mean([vals[s] - control[s] for s in both])) if both else float("nan")
            cells = " | ".join(f"{vals[s]:.1f}" if s in vals else "" for s in a.seeds)
            print(f"| {rule} | {cells} | {mean:.1f} ± {std:.1f} | {delta:+.1f} |")
            out.setdefault(mode, {})[rule] = {"per_seed": vals, "mean": mean, "std": std, "delta_vs_control": delta}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", choices=["pre", "tta"], default=["tta"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", choices=RULES, default=["control", "agreement", "crossfit"])
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--branch", type=int, default=15, help="re-score after this epoch (quality.py: 15)")
    p.add_argument("--output", choices=["box", "mask"], default="box", help="teacher.output of the simulated teacher")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--crossfit-by", choices=["view", "shape"], default="view")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="re-run finished branches")
    p.add_argument("--votes", action="store_true", help="no training: votes under each rule's scores, bleed share")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    path = RESULTS / "bd_variants.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    start = time.perf_counter()
    if a.votes:
        for mode in a.modes:
            for seed in a.seeds:
                vote_check(a, mode, seed, results)
        print(json.dumps({k: v for k, v in results.items() if k.endswith("/votes")}))
        return
    for mode in a.modes:
        for seed in a.seeds:
            run(a, mode, seed, results)
    out = summary(a, results)
    print(json.dumps({"args": vars(a), "minutes": round((time.perf_counter() - start) / 60, 1), **out}))


if __name__ == "__main__":
    main()
