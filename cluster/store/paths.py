"""Where a run keeps everything, in one place: every stage asks ``RunPaths`` for its paths.

Under ``{storage.root}/{run}/`` (docs/data.md has each table's schema):

``shapes/``, ``knowledge/round_0/``
    the distillation shapes and the teacher's knowledge of them (``data.source=table``
    reads the shapes from ``data.path`` instead); ``knowledge/round_{k}/{student}/``
    backward distillation's scores (``cluster.training.samples.scores_dir``).
``eval/shapes/``, ``eval/knowledge/round_0/``
    the evaluated shapes and their knowledge in ``mode=pre`` (in ``mode=tta`` the
    distillation shapes are the evaluated ones).
``checkpoints/{student}/``, ``tensorboard/{student}/``, ``training_curves.png``
    the run's students and their curves.
``knowledge/relabel_{r}/``, ``relabel/round_{r}[-fold_{f}]/``
    self-training: relabel round r's knowledge, and the students of the rounds before the
    last (each a run of its own, inside this one); the last round's students are the run's.
``ray_train/``, ``encoder/ray_train/``
    Ray Train's own state of the students' and the encoder's fits.
``predictions/``, ``evaluation.md``, ``segment/``, ``encoder/``, ``rejects/``,
``metrics.json``, ``config/{job}.json``
    what evaluation, segmentation, encoder pretraining, every stage's rejects and the jobs
    write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

RUN_NAME = re.compile(r"[^/]+(/relabel/round_\d+(-fold_\d+)?)?")
"""A run's name: no '/', except an earlier relabel round's run inside its run's folder."""


@dataclass(frozen=True)
class RunPaths:
    """The paths of run ``run`` (relative to the storage root)."""

    run: str

    def __truediv__(self, rel: str) -> str:
        return f"{self.run}/{rel}"

    @property
    def shapes(self) -> str:
        return self / "shapes"

    def knowledge(self, round: int = 0) -> str:
        """The teacher's knowledge (round 0) and backward distillation's score rounds."""
        return self / f"knowledge/round_{round}"

    @property
    def eval_shapes(self) -> str:
        return self / "eval/shapes"

    @property
    def eval_knowledge(self) -> str:
        return self / "eval/knowledge/round_0"

    def checkpoints(self, student: str = "") -> str:
        return self / f"checkpoints/{student}".rstrip("/")

    def tensorboard(self, student: str) -> str:
        return self / f"tensorboard/{student}"

    @property
    def curves_png(self) -> str:
        return self / "training_curves.png"

    def relabelled(self, round: int) -> str:
        """The knowledge that self-training round ``round`` (≥ 1) learns from."""
        return self / f"knowledge/relabel_{round}"

    def relabel_round(self, round: int, fold: int = -1) -> RunPaths:
        """The run holding an earlier self-training round's students (one per fold when
        cross-fitted), inside this run's folder."""
        return RunPaths(self / f"relabel/round_{round}" + (f"-fold_{fold}" if fold >= 0 else ""))

    @property
    def ray_train(self) -> str:
        """Ray Train's own run state (its checkpoints are ours, under ``checkpoints/``)."""
        return self / "ray_train"

    @property
    def predictions(self) -> str:
        return self / "predictions"

    @property
    def evaluation_md(self) -> str:
        return self / "evaluation.md"

    def segment(self, rel: str = "") -> str:
        return self / f"segment/{rel}".rstrip("/")

    def encoder(self, rel: str = "") -> str:
        return self / f"encoder/{rel}".rstrip("/")

    @property
    def encoder_file(self) -> str:
        """The finished encoder (``student.pretrained=<run>`` reads it)."""
        return self.encoder("encoder.pt")

    @property
    def rejects(self) -> str:
        return self / "rejects"

    @property
    def metrics(self) -> str:
        return self / "metrics.json"

    def job_config(self, job: str) -> str:
        return self / f"config/{job}.json"


def distill_tables(cfg: Any) -> tuple[str, str]:
    """(shapes, knowledge) of the distillation shapes: ``data.path`` for a ``table`` source."""
    paths = RunPaths(cfg.run)
    shapes = cfg.data.path if cfg.data.source == "table" else paths.shapes
    return shapes, paths.knowledge(0)


def evaluated_tables(cfg: Any) -> tuple[str, str]:
    """(shapes, knowledge) of the evaluated shapes: the distillation ones in ``mode=tta``,
    ``eval.data``'s (``eval/``; ``eval.data.path`` for a ``table`` source) in ``mode=pre``."""
    if cfg.mode != "pre":
        return distill_tables(cfg)
    paths = RunPaths(cfg.run)
    shapes = cfg.eval.data.path if cfg.eval.data.source == "table" else paths.eval_shapes
    return shapes, paths.eval_knowledge
