"""Backward distillation's re-scoring pass, one shape part at a time.

A fit that reaches its re-scoring saves ``last.pt`` awaiting it (``distil`` with
``rescore_externally``). The pass loads that snapshot, and for every item of the student
(a shape part and its knowledge parts) prepares the samples exactly as training does,
predicts them and re-scores each unit (``distill.training.rescore_samples``), writing the
new scores — only the scores — as ``{run}/knowledge/round_{k}/{student}/<knowledge part>``.
A written score part is never redone, so a stopped pass resumes where it was. The
snapshot is kept as ``checkpoints/{student}/round_{k}.pt`` (``cluster.train.prepare_fit``),
so a score part lost later is rebuilt from the same weights; once every part is written,
``last.pt`` moves on to round k and the next fit reads those scores.

``rescore_local`` runs the pass in this process; ``cluster.rescore_ray`` runs the same
``ItemRescorer`` in a Ray Data actor pool.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm import tqdm

from cluster.checkpoints import load_torch
from cluster.config import Config
from cluster.layout import PartItem
from cluster.samples import Tables, load_item, scores_table
from cluster.storage import Storage
from distill.labels import LabelSpace
from distill.student import build_student
from distill.training import rescore_samples

log = logging.getLogger(__name__)


def load_snapshot(cfg: Config, storage: Storage, checkpoint: str, space: LabelSpace, device: torch.device) -> Any:
    """(model in eval mode, the state) of a ``last.pt`` that awaits its re-scoring."""
    state = load_torch(storage, checkpoint)
    if not state.get("pending_rescore"):
        raise ValueError(f"{storage.uri(checkpoint)} is not waiting for a re-scoring")
    model = build_student(cfg.student, space.num_slots, space.num_categories)
    model.load_state_dict(state["model"])  # BatchNorm re-calibrated before the save
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
        new = rescore_samples(self.model, samples, self.space, None, self.device, cfg.train.batch_size)
        written = set(self.storage.list_parts(self.out_dir))
        units = scores = 0
        total = 0.0
        for part in item.knowledge_parts:
            if part in written:
                continue
            # the shapes whose units this knowledge part holds (one column read)
            ids = set(self.storage.read_part(self.tables.units_dir, part, ["shape_id"]).column(0).to_pylist())
            mine = {sid: sc for sid, sc in new.items() if sid in ids}
            summary = {"shapes": len(mine), "round": self.round}
            self.storage.write_part(self.out_dir, scores_table(mine), done_ids=sorted(mine), name=part, summary=summary)
            scores += len(mine)
            units += sum(len(v) for v in mine.values())
            total += float(sum(v.sum() for v in mine.values()))
        return {"part": item.shape_part, "shapes": scores, "units": units, "score_sum": total}


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


def rescore_local(cfg: Config, storage: Storage, plan: Any, snapshot: str, device: torch.device) -> dict[str, Any]:
    """Write the score parts of ``plan`` (a ``StudentPlan``) that its round lacks, in this
    process, re-scoring with ``snapshot`` (a ``last.pt`` saved awaiting the re-scoring)."""
    start = time.perf_counter()
    new_round = int(load_torch(storage, snapshot)["round"]) + 1
    out_dir = plan.tables(new_round).scores_dir
    todo = todo_items(storage, plan.items, out_dir)
    rescorer = ItemRescorer(cfg, storage, plan.tables(new_round - 1), plan.space, snapshot, out_dir, device) if todo else None
    done = []
    for item in tqdm(todo, desc=f"re-score {plan.name}", unit="part", disable=not cfg.progress):
        done.append(rescorer(item))  # type: ignore[misc]
    summary = summarise(new_round, done, len(plan.items) - len(todo), time.perf_counter() - start)
    log.info("student %s: backward distillation round %d re-scored: %s", plan.name, new_round, summary)
    return summary
