"""The training stage: shapes + knowledge → students (forward, then backward distillation).

The loop itself is ``distill.training.distil``; this module only feeds it from storage and
keeps its state there: ``{run}/checkpoints/{student}/last.pt`` every
``train.checkpoint_every`` epochs (a re-run resumes from it), ``final.pt`` when a student is
done (a re-run skips it), and every backward-distillation round's re-scored units as
``{run}/knowledge/round_{k}/`` (one part per student, named after it, so a resumed round
rewrites its own part instead of adding a second one).

``train_local`` runs in this process; ``cluster.train_ray`` runs the same per-student body
on Ray Train workers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from cluster.checkpoints import checkpoint_dir, final_bundle, load_torch, save_torch, student_name
from cluster.storage import Storage
from distill.config import Config
from distill.records import (
    SHAPE_SCHEMA,
    UNIT_SCHEMA,
    KnowledgeUnits,
    Shape,
    table_to_shapes,
    table_to_units,
    units_to_table,
)
from distill.student import build_student
from distill.training import (
    DistilState,
    LabelSpace,
    apply_rescore,
    distil,
    group_for_students,
    prepare_samples,
    rescore_samples,
)

log = logging.getLogger(__name__)


def knowledge_dir(run: str, round: int = 0, prefix: str = "") -> str:
    return f"{run}/{prefix}knowledge/round_{round}"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


@dataclass
class StudentJob:
    """One student to train: its name, label space and distillation shapes with their units."""

    name: str
    space: LabelSpace
    shapes: list[Shape]
    units: dict[str, KnowledgeUnits]


def load_training_data(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> list[StudentJob]:
    """The run's students, as ``train.per_category`` groups the shapes."""
    shapes = table_to_shapes(storage.read_table(shapes_dir, schema=SHAPE_SCHEMA))
    if not shapes:
        raise ValueError(f"{storage.uri(shapes_dir)} holds no shapes: run jobs/ingest.py (or extract) first")
    units = table_to_units(storage.read_table(units_dir, schema=UNIT_SCHEMA))
    if not units:
        raise ValueError(f"{storage.uri(units_dir)} holds no knowledge units: run jobs/extract.py first")
    jobs = []
    for group in group_for_students(shapes, cfg.train.per_category):
        space = LabelSpace.from_shapes(group)
        jobs.append(StudentJob(student_name(space, cfg.train.per_category), space, group, units))
    return jobs


def write_round(storage: Storage, run: str, student: str, round: int, units: dict[str, KnowledgeUnits]) -> None:
    """Backward distillation's re-scored units of one student as ``knowledge/round_{round}``."""
    table = units_to_table(units.values())
    storage.write_part(knowledge_dir(run, round), table, done_ids=list(units), name=f"part-{student}.parquet")


def _rescore_pending(
    cfg: Config,
    storage: Storage,
    job: StudentJob,
    samples: list[Any],
    state: dict[str, Any],
    device: torch.device,
    rank: int,
) -> dict[str, Any]:
    """A ``last.pt`` that awaits re-scoring, re-scored in this process (as ``distil`` would)."""
    snapshot = build_student(cfg.student, job.space.num_slots, job.space.num_categories).to(device)
    snapshot.load_state_dict(state["model"])
    scores = rescore_samples(snapshot, samples, job.space, state["scores"], device, cfg.train.batch_size)
    state = apply_rescore(state, scores)
    if rank == 0:
        units = {sid: job.units[sid].with_scores(sc, state["round"]) for sid, sc in state["scores"].items() if len(sc)}
        write_round(storage, cfg.run, job.name, state["round"], units)
        save_torch(storage, f"{checkpoint_dir(cfg.run, job.name)}/last.pt", state)
    log.info("student %s: re-scored round %d in this process", job.name, state["round"])
    return state


def train_student(
    cfg: Config,
    storage: Storage,
    job: StudentJob,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    wrap: Any = None,
    reduce_mean: Any = None,
    report: Any = None,
    rescore_externally: bool = False,
) -> dict[str, Any]:
    """Train one student to its end, resuming from ``last.pt`` when present.

    rescore_externally: stop when backward distillation's re-scoring is due, with
    ``last.pt`` saved awaiting it (``cluster.rescore_ray`` re-scores and resumes); the
    summary then says ``pending_rescore`` and no ``final.pt`` is written.

    wrap: turns the built model into the one to train (Ray Train's ``prepare_model``;
    None: as is) · reduce_mean: averages a float over workers · report(state, ckpt_rel):
    called after each saved checkpoint (Ray Train reports metrics there). Only rank 0
    writes to storage.
    """
    ckpt = checkpoint_dir(cfg.run, job.name)
    torch.manual_seed(cfg.seed)
    model = build_student(cfg.student, job.space.num_slots, job.space.num_categories).to(device)
    model = wrap(model) if wrap is not None else model
    samples = prepare_samples(job.shapes, job.units, job.space, cfg.data.num_points, cfg.seed)
    resume = load_torch(storage, f"{ckpt}/last.pt") if storage.exists(ckpt, "last.pt") else None
    if resume is not None and resume.get("pending_rescore"):
        if rescore_externally:  # e.g. a restarted worker group: the re-scoring pass is next
            return {"student": job.name, "epochs": resume["epoch"], "pending_rescore": True}
        # Stopped for a re-scoring pass that never ran (a Ray run continued locally): do it here.
        resume = _rescore_pending(cfg, storage, job, samples, resume, device, rank)
    if resume is not None:
        log.info("student %s: resuming after epoch %d (round %d)", job.name, resume["epoch"], resume["round"])
    bar = tqdm(
        total=cfg.train.epochs,
        initial=resume["epoch"] if resume else 0,
        desc=f"train {job.name}",
        unit="epoch",
        disable=not cfg.progress or rank != 0,
    )

    def on_epoch_end(state: DistilState) -> None:
        last = state.history[-1]
        bar.set_postfix(loss=f"{last['loss']:.4f}", round=state.round)
        bar.update(1)
        saved = (
            state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == cfg.train.epochs or state.pending_rescore
        )
        if saved and rank == 0:
            save_torch(storage, f"{ckpt}/last.pt", state.state_dict())
        if report is not None:
            report(state, f"{ckpt}/last.pt" if saved else None)

    def on_rescore(round: int, units: dict[str, KnowledgeUnits]) -> None:
        if rank == 0:
            write_round(storage, cfg.run, job.name, round, units)
        log.info("student %s: backward distillation round %d re-scored %d shapes", job.name, round, len(units))

    start = time.perf_counter()
    result = distil(
        model,
        samples,
        job.space,
        cfg.train,
        device,
        cfg.seed,
        on_epoch_end=on_epoch_end,
        on_rescore=on_rescore,
        resume=resume,
        rank=rank,
        world_size=world_size,
        reduce_mean=reduce_mean,
        rescore_externally=rescore_externally,
    )
    bar.close()
    history = result.history
    info = {
        "student": job.name,
        "categories": list(job.space.categories),
        "shapes": len(job.shapes),
        "epochs": len(history),
        "rounds": int(history[-1]["round"]) if history else 0,
        "selected_epoch": result.selected_epoch,
        "first_loss": round(history[0]["loss"], 4) if history else None,
        "last_loss": round(history[-1]["loss"], 4) if history else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if result.pending_rescore:
        return {**info, "pending_rescore": True}
    if rank == 0:
        save_torch(
            storage, f"{ckpt}/final.pt", final_bundle(result.model, job.space, cfg.student, **info, history=history)
        )
    return info


def train_local(
    cfg: Config, storage: Storage, shapes_dir: str | None = None, units_dir: str | None = None
) -> dict[str, Any]:
    """Train every student of the run in this process (skipping finished ones)."""
    shapes_dir = shapes_dir or f"{cfg.run}/shapes"
    units_dir = units_dir or knowledge_dir(cfg.run, 0)
    device = resolve_device(cfg.train.device)
    students, skipped = [], []
    for job in load_training_data(cfg, storage, shapes_dir, units_dir):
        if storage.exists(checkpoint_dir(cfg.run, job.name), "final.pt"):
            skipped.append(job.name)
            continue
        students.append(train_student(cfg, storage, job, device))
    return {"students": students, "skipped": skipped, "device": str(device)}
