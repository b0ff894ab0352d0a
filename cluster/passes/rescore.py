"""Backward distillation's re-scoring pass, one shape part at a time.

A fit that reaches its re-scoring saves ``last.pt`` awaiting it (``distil`` with
``rescore_externally``). The pass loads that snapshot, and for every item of the student
(a shape part and its knowledge parts) prepares the samples exactly as training does,
predicts them and re-scores each unit (``train.rescore``: ``distill.backward.rescore_with_rule``), writing the
new scores — only the scores — as ``{run}/knowledge/round_{k}/{student}/<knowledge part>``.
The rule is ``train.rescore`` (``distill.rescore``): a unit rule writes scores; a point
rule writes scores and relative (point, unit) pair weights in round 0's pair order; a
``_balanced`` rule also records each part's score mass, old and new, in the score part's
summary, and once every part is written the pass turns the summed masses into one factor
per (category, part) (``BALANCE_FILE``), applied when the round's samples are loaded.
A written score part is never redone, so a stopped pass resumes where it was. The
snapshot is kept as ``checkpoints/{student}/round_{k}.pt`` (``cluster.training.train.prepare_fit``),
so a score part lost later is rebuilt from the same weights; once every part is written,
``last.pt`` moves on to round k and the next fit reads those scores.

``rescore_pass`` runs it through ``cluster.passes.runner``: in this process, or in a pool of
``cluster.rescore_actors`` actors (``cluster.rescore_gpus`` each) that load the snapshot
once and re-score one item a call (``RescoreStage``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cluster.config import Config, config_from_dict, to_dict
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import rescore_actor_options
from cluster.store.layout import PartItem
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_torch
from cluster.training.samples import Tables, load_item, write_balance
from cluster.training.students import StudentPlan, resolve_device
from distill.backward import rescore_with_rule
from distill.labels import LabelSpace
from distill.records import RESCORE_RESULT_SCHEMA, scores_to_table
from distill.samples import ShapeSample, pairs_to_source
from distill.student import build_student

log = logging.getLogger(__name__)


def load_snapshot(cfg: Config, storage: Storage, checkpoint: str, space: LabelSpace, device: torch.device) -> Any:
    """(model in eval mode, the state) of a ``last.pt`` that awaits its re-scoring."""
    state = load_torch(storage, checkpoint)
    if not state.get("pending_rescore"):
        raise ValueError(f"{storage.uri(checkpoint)} is not waiting for a re-scoring")
    model = build_student(cfg.student, space.num_slots, space.num_categories)
    # BatchNorm re-calibrated before the save; with a weight average, its snapshot.
    model.load_state_dict(state.get("rescore_snapshot") or state["model"])
    return model.to(device).eval(), state


def todo_items(storage: Storage, items: list[PartItem], out_dir: str) -> list[PartItem]:
    """The items with a knowledge part whose score part is not written yet."""
    written = set(storage.list_parts(out_dir))
    return [i for i in items if any(k not in written for k in i.knowledge_parts)]


class ItemRescorer:
    """Re-scores items with one snapshot: ``(item) → {part, shapes, units, score_sum}``."""

    def __init__(
        self,
        cfg: Config,
        storage: Storage,
        tables: Tables,
        space: LabelSpace,
        checkpoint: str,
        out_dir: str,
        device: torch.device,
    ) -> None:
        self.cfg, self.storage, self.tables, self.space, self.out_dir = cfg, storage, tables, space, out_dir
        self.device = device
        self.model, state = load_snapshot(cfg, storage, checkpoint, space, device)
        self.round = int(state["round"]) + 1

    def __call__(self, item: PartItem) -> dict[str, Any]:
        cfg = self.cfg
        samples = [
            s
            for s in load_item(self.storage, self.tables, item, self.space, cfg.data.num_points, cfg.seed)
            if s.num_units
        ]
        rule = cfg.train.rescore.removesuffix("_balanced")
        new, rel = rescore_with_rule(rule, [self.model], samples, self.space, None, self.device, cfg.train.batch_size)
        by_id = {s.shape_id: s for s in samples}
        # relative pair weights follow round 0's pairs, not this resampling's
        pairs = {
            sid: pairs_to_source(w, _source(by_id[sid]), len(by_id[sid].units.point_idx))
            for sid, w in (rel or {}).items()
        }
        written = set(self.storage.list_parts(self.out_dir))
        units = scores = 0
        total = 0.0
        for part in item.knowledge_parts:
            if part in written:
                continue
            # the shapes whose units this knowledge part holds (one column read)
            ids = set(self.storage.read_part(self.tables.units_dir, part, ["shape_id"]).column(0).to_pylist())
            mine = {sid: sc for sid, sc in new.items() if sid in ids}
            summary: dict[str, Any] = {"shapes": len(mine), "round": self.round, "rule": cfg.train.rescore}
            if cfg.train.rescore.endswith("_balanced"):
                summary["mass"] = part_mass([by_id[sid] for sid in mine], mine, self.space)
            table = scores_to_table(mine, {sid: pairs[sid] for sid in mine if sid in pairs})
            self.storage.write_part(self.out_dir, table, done_ids=sorted(mine), name=part, summary=summary)
            scores += len(mine)
            units += sum(len(v) for v in mine.values())
            total += float(sum(v.sum() for v in mine.values()))
        return {"part": item.shape_part, "shapes": scores, "units": units, "score_sum": total}


def _source(s: ShapeSample) -> np.ndarray | None:
    return None if s.pair_source is None else s.pair_source.numpy()


def part_mass(
    samples: list[ShapeSample], new: dict[str, np.ndarray], space: LabelSpace
) -> dict[str, dict[str, list[float]]]:
    """Per category of the samples, each part's score mass Σ score·|unit| under the scores
    the samples trained with ("old") and under the rule's ``new`` ones (JSON-ready lists)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in samples:
        name = space.categories[s.category]
        parts = len(space.part_names[s.category])
        acc = out.setdefault(name, {"old": np.zeros(parts), "new": np.zeros(parts)})
        label = s.unit_slot.numpy() - space.offsets[s.category]
        size = np.diff(s.unit_offsets.numpy()).astype(np.float64)
        acc["old"] += np.bincount(label, weights=s.unit_score.numpy() * size, minlength=parts)
        acc["new"] += np.bincount(label, weights=np.asarray(new[s.shape_id], np.float64) * size, minlength=parts)
    return {c: {k: v.tolist() for k, v in m.items()} for c, m in out.items()}


def balance_factors(summaries: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The per-part masses of every score part of a round → per (category, part) the factor
    old mass / new mass (1 where the new mass is 0), ``distill.rescore.balance_part_mass``."""
    old: dict[str, np.ndarray] = {}
    new: dict[str, np.ndarray] = {}
    for summary in summaries:
        for c, m in summary.get("mass", {}).items():
            old[c] = old.get(c, 0.0) + np.asarray(m["old"], np.float64)
            new[c] = new.get(c, 0.0) + np.asarray(m["new"], np.float64)
    return {c: np.where(new[c] > 0, old[c] / np.where(new[c] > 0, new[c], 1.0), 1.0).tolist() for c in sorted(old)}


def finish_round(cfg: Config, storage: Storage, out_dir: str) -> None:
    """After every score part of a round is written: a ``_balanced`` rule's factor table,
    from the parts' summaries (the manifest: no row is read)."""
    if not cfg.train.rescore.endswith("_balanced"):
        return
    summaries = list(storage.manifest(out_dir).values())
    missing = [s for s in summaries if "mass" not in s]
    if missing:
        raise ValueError(
            f"{storage.uri(out_dir)}: {len(missing)} score parts were written by another rule than "
            f"train.rescore={cfg.train.rescore}; delete the folder to re-score the round"
        )
    factors = balance_factors(summaries)
    write_balance(storage, out_dir, cfg.train.rescore, factors)


def summarise(new_round: int, done: list[dict[str, Any]], skipped: int, seconds: float) -> dict[str, Any]:
    units = sum(int(d["units"]) for d in done)
    return {
        "round": new_round,
        "parts": len(done),
        "skipped_parts": skipped,
        "shapes": sum(int(d["shapes"]) for d in done),
        "units": units,
        "mean_score": round(sum(float(d["score_sum"]) for d in done) / units, 4) if units else None,
        "seconds": round(seconds, 1),
    }


class RescoreStage:
    """The pass's step: the snapshot loaded once (per actor on Ray); per item, its units
    re-scored and the round's score parts written → ``RESCORE_RESULT_SCHEMA`` rows."""

    def __init__(
        self, config: dict[str, Any], storage: Storage, plan: dict[str, Any], snapshot: str, round: int
    ) -> None:
        cfg = config_from_dict(config)
        plan_ = StudentPlan.from_dict(plan)
        device = resolve_device(cfg.train.device)  # an actor without a GPU sees none: the CPU
        self.rescore = ItemRescorer(
            cfg,
            storage,
            plan_.tables(round - 1, pooled=False),
            plan_.space,
            snapshot,
            plan_.tables(round).scores_dir,
            device,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [
            self.rescore(PartItem.from_row({k: batch[k][i] for k in batch})) for i in range(len(batch["shape_part"]))
        ]
        return pa.Table.from_pylist(rows, schema=RESCORE_RESULT_SCHEMA)


def rescore_pass(cfg: Config, storage: Storage, plan: Any, snapshot: str) -> dict[str, Any]:
    """Write the score parts that a student's (``StudentPlan``) next round lacks,
    re-scoring with ``snapshot`` (a ``last.pt`` saved awaiting its re-scoring), then the
    round's balance table (``finish_round``).

    → {round, parts, skipped_parts, shapes, units, mean_score, seconds}.
    """
    state = load_torch(storage, snapshot)
    if not state.get("pending_rescore"):
        raise ValueError(f"{storage.uri(snapshot)} is not waiting for a re-scoring")
    new_round = int(state["round"]) + 1
    del state  # the driver keeps no model weights around during the pass
    out_dir = plan.tables(new_round).scores_dir
    written = set(storage.list_parts(out_dir))
    step = Step(
        RescoreStage,
        {"config": to_dict(cfg), "storage": storage, "plan": plan.to_dict(), "snapshot": snapshot, "round": new_round},
        rescore_actor_options(cfg),
    )
    scored = Pass(
        f"re-score {plan.name}",
        (step,),
        finished=lambda row: all(k in written for k in PartItem.from_row(row).knowledge_parts),
    )
    result = run_pass(cfg, scored, (i.to_row() for i in plan.items))
    missing = todo_items(storage, plan.items, out_dir)
    if missing:
        raise RuntimeError(
            f"re-scoring of {plan.name} left {len(missing)} parts without scores: {[i.shape_part for i in missing[:5]]}"
        )
    finish_round(cfg, storage, out_dir)
    summary = summarise(new_round, result.rows, result.skipped, result.seconds)
    log.info("student %s: backward distillation round %d re-scored: %s", plan.name, new_round, summary)
    return summary
