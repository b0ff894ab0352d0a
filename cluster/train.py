"""The training stage: shapes + knowledge → students (forward, then backward distillation).

The loop itself is ``distill.training.distil``; this module plans the students from the
tables' manifests (never reading the tables themselves), feeds each fit from storage one
shape part at a time (``cluster.samples``) and keeps the state there:
``{run}/checkpoints/{student}/last.pt`` (model, optimiser, schedule, epoch, round: its size
does not grow with the corpus) every ``train.checkpoint_every`` epochs, ``final.pt`` when
a student is done (a re-run skips it), and each backward-distillation round's scores as
``{run}/knowledge/round_{k}/{student}/`` (``cluster.rescoring``).

A student alternates *fits* (``fit_student``: train until a re-scoring is due, or to the
end) and *re-scoring passes*. ``train_local`` runs both in this process;
``cluster.train_ray`` runs the fits on Ray Train and the passes on a Ray Data actor pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from cluster.checkpoints import checkpoint_dir, final_bundle, load_torch, save_torch, student_name
from cluster.config import Config
from cluster.layout import PartItem, category_parts, plan_parts, shapes_manifest
from cluster.samples import PartSource, Tables, scores_dir
from cluster.storage import Storage
from distill.backward import apply_rescore
from distill.labels import LabelSpace
from distill.sources import SampleSource
from distill.student import build_student
from distill.training import DistilState, distil

log = logging.getLogger(__name__)


def knowledge_dir(run: str, round: int = 0, prefix: str = "") -> str:
    return f"{run}/{prefix}knowledge/round_{round}"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@dataclass
class StudentPlan:
    """One student to train: its name, label space and the parts of its categories."""

    name: str
    space: LabelSpace
    shapes_dir: str
    units_dir: str
    items: list[PartItem] = field(default_factory=list)
    with_units: int = 0

    def tables(self, round: int) -> Tables:
        """Where round ``round``'s fit reads: the shapes, round 0's units, the round's scores."""
        return Tables(self.shapes_dir, self.units_dir, scores_dir(self.units_dir, self.name, round) if round else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "space": self.space.to_dict(),
            "shapes_dir": self.shapes_dir,
            "units_dir": self.units_dir,
            "items": [[i.shape_part, list(i.knowledge_parts), list(i.categories), i.with_units] for i in self.items],
            "with_units": self.with_units,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentPlan:
        items = [PartItem(p, tuple(k), tuple(c), int(n)) for p, k, c, n in d["items"]]
        return cls(d["name"], LabelSpace.from_dict(d["space"]), d["shapes_dir"], d["units_dir"], items, d["with_units"])


def plan_students(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> list[StudentPlan]:
    """The run's students, as ``train.per_category`` groups the categories, planned from
    the shape and knowledge manifests (one small read each)."""
    shapes = shapes_manifest(storage, shapes_dir)
    if not shapes:
        raise ValueError(f"{storage.uri(shapes_dir)} holds no shapes: run jobs/ingest.py (or extract) first")
    knowledge = storage.manifest(units_dir)
    if not knowledge:
        raise ValueError(f"{storage.uri(units_dir)} holds no knowledge units: run jobs/extract.py first")
    parts = category_parts(shapes, where=f"{storage.uri(shapes_dir)}: ")
    groups = [[c] for c in parts] if cfg.train.per_category else [list(parts)]
    plans = []
    for group in groups:
        space = LabelSpace(tuple(group), tuple(parts[c] for c in group))
        plan = plan_parts(shapes, knowledge, group, where=f"{storage.uri(units_dir)}: ")
        if plan.with_units == 0:
            raise ValueError(f"{storage.uri(units_dir)}: no shape of {group} has a knowledge unit to learn from")
        name = student_name(space, cfg.train.per_category)
        plans.append(StudentPlan(name, space, shapes_dir, units_dir, plan.items, plan.with_units))
    return plans


def part_source(cfg: Config, storage: Storage, plan: StudentPlan, round: int) -> PartSource:
    """The streaming source of one fit in this process."""
    val = cfg.train.val_fraction if cfg.train.select == "val" else 0.0
    return PartSource(
        storage, plan.tables(round), plan.items, plan.space, cfg.data.num_points, cfg.train.batch_size, cfg.seed, val
    )


def pending_round(storage: Storage, ckpt: str) -> int | None:
    """The round a student's ``last.pt`` waits to have re-scored, or None."""
    if not storage.exists(ckpt, "last.pt"):
        return None
    state = load_torch(storage, f"{ckpt}/last.pt")
    return int(state["round"]) + 1 if state.get("pending_rescore") else None


def fit_student(
    cfg: Config,
    storage: Storage,
    plan: StudentPlan,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    reduce_mean: Callable[[float], float] | None = None,
    report: Callable[[DistilState, str | None], None] | None = None,
    source: Callable[[int], SampleSource] | None = None,
) -> dict[str, Any]:
    """One fit of a student: from ``last.pt`` (if any) to its next re-scoring or its end.

    Returns a summary; ``pending_rescore`` in it says the fit stopped for a re-scoring
    pass (``last.pt`` saved awaiting it, no ``final.pt``). wrap: turns the built model into
    the one to train (Ray Train's ``prepare_model``) · reduce_mean: averages a float over
    workers · report(state, ckpt_rel): after each epoch · source(round): this worker's
    samples (default: ``part_source``). Only rank 0 writes to storage.
    """
    ckpt = checkpoint_dir(cfg.run, plan.name)
    torch.manual_seed(cfg.seed)
    model = build_student(cfg.student, plan.space.num_slots, plan.space.num_categories).to(device)
    model = wrap(model) if wrap is not None else model
    resume = load_torch(storage, f"{ckpt}/last.pt") if storage.exists(ckpt, "last.pt") else None
    if resume is not None and resume.get("pending_rescore"):
        return {"student": plan.name, "epochs": resume["epoch"], "pending_rescore": True}
    at_round = int(resume["round"]) if resume else 0
    first_epoch = int(resume["epoch"]) if resume else 0
    if resume is not None:
        log.info("student %s: resuming after epoch %d (round %d)", plan.name, resume["epoch"], at_round)
    data = source(at_round) if source is not None else part_source(cfg, storage, plan, at_round)
    bar = tqdm(
        total=cfg.train.epochs,
        initial=resume["epoch"] if resume else 0,
        desc=f"train {plan.name}",
        unit="epoch",
        disable=not cfg.progress or rank != 0,
    )

    def on_epoch_end(state: DistilState) -> None:
        bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}", round=state.round)
        bar.update(1)
        saved = (
            state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == cfg.train.epochs or state.pending_rescore
        )
        if saved and rank == 0:
            save_torch(storage, f"{ckpt}/last.pt", state.state_dict())
        if report is not None:
            report(state, f"{ckpt}/last.pt" if saved else None)

    start = time.perf_counter()
    result = distil(
        model,
        data,
        plan.space,
        cfg.train,
        device,
        cfg.seed,
        on_epoch_end=on_epoch_end,
        resume=resume,
        rank=rank,
        world_size=world_size,
        reduce_mean=reduce_mean,
        rescore_externally=True,
    )
    bar.close()
    history = result.history
    info = {
        "student": plan.name,
        "categories": list(plan.space.categories),
        "shapes": plan.with_units,
        "epochs": len(history),
        "rounds": int(history[-1]["round"]) if history else 0,
        "selected_epoch": result.selected_epoch,
        "first_loss": round(history[0]["loss"], 4) if history else None,
        "last_loss": round(history[-1]["loss"], 4) if history else None,
        "seconds": round(time.perf_counter() - start, 1),
        # wall-clock time of this fit's first training batch (fit start-up, bench/scale.py)
        "first_batch_at": history[first_epoch].get("first_batch_at") if len(history) > first_epoch else None,
    }
    if result.pending_rescore:
        return {**info, "pending_rescore": True}
    if rank == 0:
        bundle = final_bundle(result.model, plan.space, cfg.student, **info, history=history)
        save_torch(storage, f"{ckpt}/final.pt", bundle)
    return info


def prepare_fit(
    storage: Storage, plan: StudentPlan, ckpt: str, rescore_pass: Callable[[str], dict[str, Any]]
) -> dict[str, Any] | None:
    """Make the next fit's scores whole; → the re-scoring pass's summary, if one ran.

    A ``last.pt`` awaiting its re-scoring is kept as ``round_{k}.pt``, re-scored by
    ``rescore_pass(snapshot)`` and moved on to round k. A fit in round k ≥ 1 whose score
    parts are not all there (lost since) has them rebuilt from ``round_{k}.pt`` first.
    """
    from cluster.rescoring import todo_items

    if not storage.exists(ckpt, "last.pt"):
        return None
    state = load_torch(storage, f"{ckpt}/last.pt")
    if state.get("pending_rescore"):
        k = int(state["round"]) + 1
        snapshot = f"{ckpt}/round_{k}.pt"
        if not storage.exists(snapshot):
            storage.write_bytes(snapshot, storage.read_bytes(f"{ckpt}/last.pt"))
        summary = rescore_pass(snapshot)
        resume_after_rescore(storage, f"{ckpt}/last.pt")
        return summary
    k = int(state["round"])
    if k < 1 or not todo_items(storage, plan.items, plan.tables(k).scores_dir):
        return None
    snapshot = f"{ckpt}/round_{k}.pt"
    if not storage.exists(snapshot):
        raise FileNotFoundError(
            f"{storage.uri(plan.tables(k).scores_dir)} lacks score parts and the snapshot that made them "
            f"({storage.uri(snapshot)}) is gone: delete {storage.uri(ckpt)} to train {plan.name} afresh"
        )
    log.warning("student %s: round %d lacks score parts; rebuilding them from %s", plan.name, k, snapshot)
    return rescore_pass(snapshot)


def train_student_local(cfg: Config, storage: Storage, plan: StudentPlan, device: torch.device) -> dict[str, Any]:
    """A student's fits and re-scoring passes, all in this process, to ``final.pt``."""
    from cluster.rescoring import rescore_local

    ckpt = checkpoint_dir(cfg.run, plan.name)
    rounds, seconds = [], 0.0
    for _ in range(cfg.train.bd_rounds + 2):
        done = prepare_fit(storage, plan, ckpt, lambda snap: rescore_local(cfg, storage, plan, snap, device))
        if done is not None:
            rounds.append(done)
        info = fit_student(cfg, storage, plan, device)
        seconds += float(info.get("seconds", 0.0))
        if not info.get("pending_rescore"):
            return {**info, "seconds": round(seconds, 1), "rescoring": rounds}
    raise RuntimeError(f"student {plan.name}: still waiting for a re-scoring after {cfg.train.bd_rounds} rounds")


def resume_after_rescore(storage: Storage, checkpoint: str) -> dict[str, Any]:
    """Move a pending ``last.pt`` on to the next round (its scores are in the round's table)."""
    state = apply_rescore(load_torch(storage, checkpoint))
    save_torch(storage, checkpoint, state)
    return state


def train_local(
    cfg: Config, storage: Storage, shapes_dir: str | None = None, units_dir: str | None = None
) -> dict[str, Any]:
    """Train every student of the run in this process (skipping finished ones)."""
    shapes_dir = shapes_dir or f"{cfg.run}/shapes"
    units_dir = units_dir or knowledge_dir(cfg.run, 0)
    device = resolve_device(cfg.train.device)
    students, skipped = [], []
    for plan in plan_students(cfg, storage, shapes_dir, units_dir):
        if storage.exists(checkpoint_dir(cfg.run, plan.name), "final.pt"):
            skipped.append(plan.name)
            continue
        students.append(train_student_local(cfg, storage, plan, device))
    return {"students": students, "skipped": skipped, "device": str(device)}
