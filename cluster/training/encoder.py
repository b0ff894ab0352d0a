"""Encoder pretraining: the run's shapes, without labels → ``{run}/encoder/encoder.pt``.

The work of ``jobs/pretrain_encoder.py`` (its stage is ``cluster.pipeline.pretrain_encoder``,
which first ingests ``data`` (any source, ``mix``
included) into the run's shape table like every job, then trains the student's encoder
with a self-supervised objective (``encoder.objective``; ``distill.masked_points``)
through ``distill.encoder_training.fit_encoder``, streaming the shape parts from
storage: in this process (``CloudSource``, a seeded shuffle buffer over the parts), or on
Ray Train (``cluster.training.encoder_ray``), as ``cluster.backend`` says. Only points and
normals are read: no labels, no knowledge.

What it writes under ``{run}/encoder/``: ``last.pt`` (the whole fit: model with its
decoder, optimiser, schedule, epoch, history) every ``encoder.checkpoint_every`` epochs —
a killed job resumes from it, and with the same batches ends on the same weights —;
``encoder.pt`` (``distill.student.pretrained.encoder_bundle``: the encoder alone and
what it was trained for) when done, which a re-run skips to; TensorBoard curves under
``{run}/tensorboard/encoder``. ``student.pretrained=<run or encoder.pt>`` loads it
(``cluster.training.pretrained``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cluster.config import Config
from cluster.store.layout import shapes_manifest
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_torch, save_torch
from cluster.training.curves import CurveLog
from cluster.training.students import resolve_device
from distill.config import ConfigError
from distill.encoder_training import CloudBatch, EncoderFitState, fit_encoder
from distill.errors import NotFoundError
from distill.masked_points import MaskedPointModel, Masking
from distill.samples import mix_seed, point_choice
from distill.student import STUDENTS
from distill.student.pretrained import encoder_bundle
from distill.training import ONE_WORKER, Workers

log = logging.getLogger(__name__)

ENCODER_NAME = "encoder"
"""The fit's name in checkpoints' and curves' paths."""
CLOUD_COLUMNS = ["shape_id", "num_points", "points", "normals"]
"""All the pretraining reads of a shape part."""


def encoder_dir(run: str) -> str:
    return RunPaths(run).encoder()


def encoder_file(run: str) -> str:
    """Where a run's finished encoder is (``student.pretrained=<run>`` reads it)."""
    return RunPaths(run).encoder_file


def fit_settings(cfg: Config) -> dict[str, Any]:
    """What a resumed fit must share with the one that wrote its checkpoint."""
    e, s = cfg.encoder, cfg.student
    return {
        "backbone": s.backbone,
        "width": s.width,
        "k": s.k,
        "use_normals": s.use_normals,
        "num_points": cfg.data.num_points,
        "objective": e.objective,
        "group_size": e.group_size,
        "mask_ratio": e.mask_ratio,
        "decoder_width": e.decoder_width,
        "epochs": e.epochs,
        "batch_size": e.batch_size,
    }


def build_pretraining_model(cfg: Config) -> MaskedPointModel:
    """The student's own encoder (built by the student registry, so its tensors are the
    student's) inside the objective's model."""
    s = cfg.student
    student = STUDENTS[s.backbone](num_parts=1, width=s.width, k=s.k, use_normals=s.use_normals, dropout=0.0)
    masking = Masking(cfg.data.num_points, cfg.encoder.group_size, cfg.encoder.mask_ratio)
    return MaskedPointModel(student.encoder, masking, s.use_normals, cfg.encoder.decoder_width)


# -- data ---------------------------------------------------------------------------


@dataclass
class EncoderPlan:
    """The shape parts a fit reads and how many shapes they hold."""

    shapes_dir: str
    parts: list[str]
    shapes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderPlan:
        return cls(d["shapes_dir"], list(d["parts"]), int(d["shapes"]))


def plan_encoder(storage: Storage, shapes_dir: str) -> EncoderPlan:
    """The parts of ``shapes_dir`` (one manifest read); an empty table is a NotFoundError."""
    manifest = shapes_manifest(storage, shapes_dir)
    shapes = sum(int(m.get("shapes", 0)) for m in manifest.values())
    if not shapes:
        raise NotFoundError(
            f"{storage.uri(shapes_dir)} holds no shapes to pretrain on — check data.* (the encoder "
            "trains on data's shapes; every one was rejected or the source is empty)"
        )
    return EncoderPlan(shapes_dir, sorted(manifest), shapes)


def read_clouds(
    storage: Storage, shapes_dir: str, part: str, num_points: int, seed: int, use_normals: bool
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """One part's clouds, each resampled to ``num_points`` as every stage does
    (``distill.samples.point_choice``) → [(points (N, 3), normals (N, 3) or None)]."""
    table = storage.read_part(shapes_dir, part, CLOUD_COLUMNS)
    out = []
    for row in table.to_pylist():
        n = int(row["num_points"])
        if n < 1:
            continue
        choice = point_choice(n, num_points, seed, row["shape_id"])
        points = np.asarray(row["points"], np.float32).reshape(n, 3)[choice]
        normals = None
        if use_normals:
            if row["normals"] is None:
                raise ConfigError(
                    f"{storage.uri(shapes_dir, part)}: shape {row['shape_id']} has no normals but "
                    "student.use_normals=true — pretrain without normals or ingest a source with them"
                )
            normals = np.asarray(row["normals"], np.float32).reshape(n, 3)[choice]
        if not np.isfinite(points).all():
            log.warning("%s: shape %s has non-finite points; skipped", storage.uri(shapes_dir, part), row["shape_id"])
            continue
        out.append((points, normals))
    return out


def collate_clouds(clouds: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> CloudBatch:
    points = torch.from_numpy(np.stack([c[0] for c in clouds]))
    normals = None if clouds[0][1] is None else torch.from_numpy(np.stack([c[1] for c in clouds]))  # type: ignore[misc]
    return points, normals


class CloudSource:
    """An epoch's batches in this process: the parts in a seeded order through a shuffle
    buffer of ``buffer`` clouds (memory: the buffer and one part, whatever the corpus)."""

    def __init__(self, cfg: Config, storage: Storage, plan: EncoderPlan, buffer: int = 2048) -> None:
        self.cfg, self.storage, self.plan = cfg, storage, plan
        self.batch_size = cfg.encoder.batch_size
        self.buffer = max(buffer, 2 * self.batch_size)

    def _read(self, part: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
        c = self.cfg
        return read_clouds(self.storage, self.plan.shapes_dir, part, c.data.num_points, c.seed, c.student.use_normals)

    def __call__(self, epoch: int) -> Iterator[CloudBatch]:
        rng = np.random.default_rng(mix_seed(self.cfg.train.data_order_seed(self.cfg.seed), epoch, 43))
        order = [self.plan.parts[int(i)] for i in rng.permutation(len(self.plan.parts))]
        buffer: list[tuple[np.ndarray, np.ndarray | None]] = []
        while order or buffer:
            while order and len(buffer) < self.buffer:
                buffer += self._read(order.pop(0))
            buffer = [buffer[int(j)] for j in rng.permutation(len(buffer))]
            keep = self.buffer // 2 if order else 0
            while len(buffer) > keep:
                batch, buffer = buffer[: self.batch_size], buffer[self.batch_size :]
                yield collate_clouds(batch)


def steps_per_epoch(shapes: int, batch_size: int, world: int = 1) -> int:
    return max(1, -(-shapes // (batch_size * world)))


# -- one fit ------------------------------------------------------------------------


def run_fit(
    cfg: Config,
    storage: Storage,
    plan: EncoderPlan,
    device: torch.device,
    batches: Any,
    workers: Workers = ONE_WORKER,
    wrap: Any = None,
    report: Any = None,
) -> list[dict[str, float]]:
    """The fit of this process (one of ``workers``): resumes from ``last.pt`` when there is
    one, checkpoints (rank 0), writes curves and a progress bar, and ``encoder.pt`` at the end."""
    ckpt = f"{encoder_dir(cfg.run)}/last.pt"
    resume = None
    if storage.exists(ckpt):
        resume = EncoderFitState.from_dict(load_torch(storage, ckpt), storage.uri(ckpt))
        log.info("encoder %s: resuming after epoch %d", cfg.run, resume.epoch)
    torch.manual_seed(cfg.seed)
    model: nn.Module = build_pretraining_model(cfg).to(device)
    model = wrap(model) if wrap is not None else model
    rank = workers.rank
    curves = CurveLog(storage, cfg.run, ENCODER_NAME) if rank == 0 else None
    bar = tqdm(
        total=cfg.encoder.epochs,
        initial=resume.epoch if resume else 0,
        desc=f"pretrain encoder {cfg.run}",
        unit="epoch",
        disable=not cfg.progress or rank != 0,
    )

    def on_epoch_end(state: EncoderFitState) -> None:
        h = state.history[-1]
        if rank == 0:
            log.info(
                "encoder %s: epoch %d/%d loss %.6f (%d steps, %.0f s)",
                cfg.run, state.epoch, cfg.encoder.epochs, h["loss"], h["steps"], h["seconds"],
            )  # fmt: skip
        bar.set_postfix(loss=f"{h['loss']:.5f}")
        bar.update(1)
        if curves is not None:
            curves.epoch(state.history[-1])
        last = state.epoch == cfg.encoder.epochs
        if rank == 0 and (state.epoch % cfg.encoder.checkpoint_every == 0 or last):
            save_torch(storage, ckpt, state.to_dict())
        if report is not None:
            report(state)

    try:
        history = fit_encoder(
            model,
            batches,
            cfg.encoder,
            steps_per_epoch(plan.shapes, cfg.encoder.batch_size, workers.world_size),
            device,
            cfg.seed,
            fit_settings(cfg),
            resume,
            workers,
            cfg.train.amp,
            on_epoch_end,
        )
    finally:
        bar.close()
        if curves is not None:
            curves.close()
    if rank == 0:
        bare = getattr(model, "module", model)
        info = {
            "objective": cfg.encoder.objective,
            "shapes": plan.shapes,
            "shapes_dir": plan.shapes_dir,
            "epochs": len(history),
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "history": history,
        }
        save_torch(
            storage, encoder_file(cfg.run), encoder_bundle(bare.encoder, cfg.student, cfg.data.num_points, **info)
        )
    return history


def pretrain_local(cfg: Config, storage: Storage, plan: EncoderPlan) -> list[dict[str, float]]:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return run_fit(cfg, storage, plan, resolve_device(cfg.train.device), CloudSource(cfg, storage, plan))


__all__ = [
    "CloudSource",
    "EncoderPlan",
    "build_pretraining_model",
    "encoder_dir",
    "encoder_file",
    "plan_encoder",
    "pretrain_local",
    "read_clouds",
    "run_fit",
]
