"""The training stage: shapes + knowledge → students (forward, then backward distillation).

The loop itself is ``distill.training.distil``; this module plans the students from the
tables' manifests (never reading the tables themselves), feeds each fit from storage one
shape part at a time (``cluster.training.samples``) and keeps the state there:
``{run}/checkpoints/{student}/last.pt`` (model, optimiser, schedule, epoch, round: its size
does not grow with the corpus) every ``train.checkpoint_every`` epochs, ``final.pt`` when
a student is done (a re-run skips it), and each backward-distillation round's scores as
``{run}/knowledge/round_{k}/{student}/`` (``cluster.passes.rescore``).

A student alternates *fits* (``fit_student``: train until a re-scoring is due, or to the
end) and *re-scoring passes*, in one loop (``train_student``) that both drivers share:
``train_local`` runs the fits and passes in this process; ``cluster.training.train_ray`` runs the
fits on Ray Train and the passes on a Ray Data actor pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from cluster.config import Config
from cluster.passes.rescore import rescore_pass, todo_items
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.checkpoints import checkpoint_dir, final_bundle, load_torch, save_torch
from cluster.training.curves import CurveLog
from cluster.training.pretrained import apply_freeze, load_encoder_into
from cluster.training.samples import PartSource
from cluster.training.students import StudentPlan, plan_students, resolve_device
from distill.backward import apply_rescore
from distill.config import ConfigError
from distill.samples import Batch, steps_per_epoch
from distill.student import build_student
from distill.training import ONE_WORKER, DistilState, Workers, distil

log = logging.getLogger(__name__)


def knowledge_dir(run: str, round: int = 0) -> str:
    return RunPaths(run).knowledge(round)


def part_source(
    cfg: Config, storage: Storage, plan: StudentPlan, round: int, stream: Callable[[int], Iterable[Batch]] | None = None
) -> PartSource:
    """The streaming source of one fit of round ``round``; ``stream``: where its training
    batches come from instead of the parts (a Ray Train worker's shard)."""
    val = cfg.train.val_fraction if cfg.train.select == "val" else 0.0
    return PartSource(
        storage,
        plan.tables(round),
        plan.items,
        plan.space,
        cfg.data.num_points,
        cfg.train.batch_size,
        cfg.seed,
        val,
        stream=stream,
        order_seed=cfg.train.data_order_seed(cfg.seed),
        fold=(cfg.train.fold, cfg.train.relabel_folds),
    )


def last_state(storage: Storage, ckpt: str) -> dict[str, Any] | None:
    """A student's resumable state (``{ckpt}/last.pt``), or None before its first save."""
    return load_torch(storage, f"{ckpt}/last.pt") if storage.exists(ckpt, "last.pt") else None


@dataclass
class FitOutcome:
    """How one fit ended: its summary (``info``) and whether it stopped for a re-scoring
    pass (``rescore_due``: ``last.pt`` saved awaiting it, no ``final.pt``), which tells
    ``train_student`` to run a pass and fit again."""

    info: dict[str, Any]
    rescore_due: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fit's summary, flat (``train_info.json``: what a user and bench/scale.py read),
        with ``rescore_due`` beside its keys."""
        return {**self.info, "rescore_due": self.rescore_due}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitOutcome:
        info = {k: v for k, v in d.items() if k != "rescore_due"}
        return cls(info, bool(d.get("rescore_due", False)))


def fit_student(
    cfg: Config,
    storage: Storage,
    plan: StudentPlan,
    device: torch.device,
    resume: dict[str, Any] | None,
    workers: Workers = ONE_WORKER,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    report: Callable[[DistilState, str | None], None] | None = None,
    stream: Callable[[int], Iterable[Batch]] | None = None,
) -> FitOutcome:
    """One fit of a student: from ``resume`` (its ``last.pt``, moved on past any pending
    re-scoring; None: from scratch) to its next re-scoring or its end.

    workers: this process among the fit's workers · wrap: turns the built model into the
    one to train (Ray Train's ``prepare_model``) · report(state, ckpt_rel): after each
    epoch · stream(epoch): this worker's training batches (default: read from the parts,
    ``part_source``). Only rank 0 writes to storage.
    """
    ckpt = checkpoint_dir(cfg.run, plan.name)
    rank = workers.rank
    torch.manual_seed(cfg.seed)
    model = build_student(cfg.student, plan.space.num_slots, plan.space.num_categories)
    pretrained = None
    if cfg.student.pretrained and resume is None:  # a resumed fit has its weights in last.pt
        pretrained = load_encoder_into(cfg, storage, model)
    apply_freeze(cfg, model)  # before the wrap: DDP then syncs the trainable weights only
    model = model.to(device)
    model = wrap(model) if wrap is not None else model
    at_round = int(resume["round"]) if resume else 0
    first_epoch = int(resume["epoch"]) if resume else 0
    if resume is not None:
        log.info("student %s: resuming after epoch %d (round %d)", plan.name, resume["epoch"], at_round)
    data = part_source(cfg, storage, plan, at_round, stream)
    train_cfg = cfg.train.with_steps(steps_per_epoch(data.num_train, cfg.train.batch_size, workers.world_size))
    bar = tqdm(
        total=train_cfg.epochs,
        initial=resume["epoch"] if resume else 0,
        desc=f"train {plan.name}",
        unit="epoch",
        disable=not cfg.progress or rank != 0,
    )

    curves = CurveLog(storage, cfg.run, plan.name) if rank == 0 else None

    def on_epoch_end(state: DistilState) -> None:
        bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}", round=state.round)
        bar.update(1)
        if curves is not None:
            curves.epoch(state.history[-1])
        saved = (
            state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == train_cfg.epochs or state.pending_rescore
        )
        if saved and rank == 0:
            save_torch(storage, f"{ckpt}/last.pt", state.state_dict())
        if report is not None:
            report(state, f"{ckpt}/last.pt" if saved else None)

    start = time.perf_counter()
    try:
        result = distil(
            model,
            data,
            plan.space,
            train_cfg,
            device,
            cfg.seed,
            on_epoch_end=on_epoch_end,
            resume=resume,
            workers=workers,
            rescore_externally=True,
        )
    finally:  # a failed fit still leaves its curves, and no temporary folder
        bar.close()
        if curves is not None:
            curves.close()
    history = result.history
    info = {
        "student": plan.name,
        "categories": list(plan.space.categories),
        "shapes": plan.with_units,
        "untrained_categories": list(plan.untrained),
        "knowledge": plan.units_dir,
        "epochs": len(history),
        "rounds": int(history[-1]["round"]) if history else 0,
        "selected_epoch": result.selected_epoch,
        "first_loss": round(history[0]["loss"], 4) if history else None,
        "last_loss": round(history[-1]["loss"], 4) if history else None,
        "seconds": round(time.perf_counter() - start, 1),
        # wall-clock time of this fit's first training batch (fit start-up, bench/scale.py)
        "first_batch_at": history[first_epoch].get("first_batch_at") if len(history) > first_epoch else None,
    }
    if cfg.student.pretrained:
        # loaded by this fit, or by the student's first fit (a resumed one reads last.pt)
        info["pretrained"] = pretrained or {"pretrained": cfg.student.pretrained}
        info["frozen_encoder"] = cfg.student.freeze_encoder
    if result.pending_rescore:
        return FitOutcome(info, rescore_due=True)
    if rank == 0:
        bundle = final_bundle(result.model, plan.space, cfg.student, **info, history=history)
        save_torch(storage, f"{ckpt}/final.pt", bundle)
    return FitOutcome(info)


def prepare_fit(
    storage: Storage,
    plan: StudentPlan,
    ckpt: str,
    state: dict[str, Any] | None,
    rescore_pass: Callable[[str], dict[str, Any]],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Make the next fit's scores whole, from ``state`` (``last.pt`` as just read, or None)
    → (the state the fit resumes from, the re-scoring pass's summary if one ran).

    A state awaiting its re-scoring is kept as ``round_{k}.pt``, re-scored by
    ``rescore_pass(snapshot)`` and moved on to round k (saved as ``last.pt``). A fit in
    round k ≥ 1 whose score parts are not all there (lost since) has them rebuilt from
    ``round_{k}.pt`` first.
    """
    if state is None:
        return None, None
    if state.get("pending_rescore"):
        k = int(state["round"]) + 1
        snapshot = f"{ckpt}/round_{k}.pt"
        if not storage.exists(snapshot):
            save_torch(storage, snapshot, state)
        summary = rescore_pass(snapshot)
        state = apply_rescore(state)  # its scores are in the round's table
        save_torch(storage, f"{ckpt}/last.pt", state)
        return state, summary
    k = int(state["round"])
    if k < 1 or not todo_items(storage, plan.items, plan.tables(k).scores_dir):
        return state, None
    snapshot = f"{ckpt}/round_{k}.pt"
    if not storage.exists(snapshot):
        raise FileNotFoundError(
            f"{storage.uri(plan.tables(k).scores_dir)} lacks score parts and the snapshot that made them "
            f"({storage.uri(snapshot)}) is gone: delete {storage.uri(ckpt)} to train {plan.name} afresh"
        )
    log.warning("student %s: round %d lacks score parts; rebuilding them from %s", plan.name, k, snapshot)
    return state, rescore_pass(snapshot)


def train_student(
    cfg: Config,
    storage: Storage,
    plan: StudentPlan,
    fit: Callable[[dict[str, Any] | None], FitOutcome],
    rescore_pass: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """A student's fits and re-scoring passes, from wherever ``last.pt`` stands to
    ``final.pt``: the one loop of both drivers, so a run stopped at any step and resumed by
    either ends the same. Each round reads ``last.pt`` once (``prepare_fit`` moves it on
    past a pending re-scoring) and hands it to ``fit(state)``.

    → the last fit's summary with ``seconds`` (the fits' training loops, start-ups and
    passes apart) and ``rescoring`` (the passes' summaries).
    """
    ckpt = checkpoint_dir(cfg.run, plan.name)
    rounds, seconds = [], 0.0
    for _ in range(cfg.train.bd_rounds + 2):
        state, done = prepare_fit(storage, plan, ckpt, last_state(storage, ckpt), rescore_pass)
        if done is not None:
            rounds.append(done)
        outcome = fit(state)
        seconds += float(outcome.info.get("seconds", 0.0))
        if not outcome.rescore_due:
            return {**outcome.info, "seconds": round(seconds, 1), "rescoring": rounds}
    raise RuntimeError(f"student {plan.name}: still waiting for a re-scoring after {cfg.train.bd_rounds} rounds")


def is_finished(storage: Storage, run: str, plan: StudentPlan) -> bool:
    """Whether ``plan``'s student has its ``final.pt`` in ``run`` (a re-run skips it). One
    trained from another knowledge table (``train.relabel_rounds`` changed since) is
    refused: skipping it would report the wrong generation."""
    rel = f"{checkpoint_dir(run, plan.name)}/final.pt"
    if not storage.exists(rel):
        return False
    trained_from = load_torch(storage, rel).get("knowledge", "")
    if trained_from != plan.units_dir and (trained_from or "/relabel_" in plan.units_dir):
        raise ConfigError(
            f"{storage.uri(rel)} was trained from {trained_from or 'the teacher units'}, this run's settings "
            f"train it from {plan.units_dir} (train.relabel_rounds changed?): use a new run name, or delete "
            f"{storage.uri(run, 'checkpoints')} to train again"
        )
    return True


def train_student_local(cfg: Config, storage: Storage, plan: StudentPlan, device: torch.device) -> dict[str, Any]:
    """A student's fits and re-scoring passes, all in this process, to ``final.pt``."""
    return train_student(
        cfg,
        storage,
        plan,
        lambda state: fit_student(cfg, storage, plan, device, state),
        lambda snapshot: rescore_pass(cfg, storage, plan, snapshot),
    )


def train_local(
    cfg: Config, storage: Storage, shapes_dir: str | None = None, units_dir: str | None = None
) -> dict[str, Any]:
    """Train every student of the run in this process (skipping finished ones)."""
    shapes_dir = shapes_dir or RunPaths(cfg.run).shapes
    units_dir = units_dir or knowledge_dir(cfg.run, 0)
    device = resolve_device(cfg.train.device)
    students, skipped = [], []
    for plan in plan_students(cfg, storage, shapes_dir, units_dir):
        if is_finished(storage, cfg.run, plan):
            skipped.append(plan.name)
            continue
        students.append(train_student_local(cfg, storage, plan, device))
    return {"students": students, "skipped": skipped, "device": str(device)}
