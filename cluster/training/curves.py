"""Training curves a user can look at: TensorBoard event files under the run, written by a
fit's rank 0 as it trains, and a PNG beside ``evaluation.md`` (``distill.curves``).

    tensorboard --logdir runs/            # {storage.root}/{run}/tensorboard/{student}/

Events are written by tensorboardX into a local folder and copied to the run's storage
after every epoch, so they reach ``s3://`` roots too; a resumed fit adds a new event file
beside the first (TensorBoard reads a folder's files as one run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any

from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from cluster.training.checkpoints import checkpoint_dir, load_torch
from distill.curves import curves_png

SCALARS = ("loss", "lr", "val_agreement", "shapes_per_s", "round")


def tensorboard_dir(run: str, student: str) -> str:
    return RunPaths(run).tensorboard(student)


class CurveLog:
    """Per-epoch scalars of one fit → TensorBoard events in the run's storage."""

    def __init__(self, storage: Storage, run: str, student: str) -> None:
        from tensorboardX import SummaryWriter

        self.storage, self.dest = storage, tensorboard_dir(run, student)
        self.local = tempfile.mkdtemp(prefix="partdistill-tb-")
        # tensorboardX names a file by the second and the host: a resumed fit that starts
        # within the second of the first would overwrite its events without a suffix.
        suffix = f".{uuid.uuid4().hex[:8]}"
        self.writer = SummaryWriter(self.local, flush_secs=3600, filename_suffix=suffix)

    def epoch(self, record: dict[str, float]) -> None:
        step = int(record["epoch"])
        for key in SCALARS:
            if key in record:
                self.writer.add_scalar(f"train/{key}", float(record[key]), step)
        self.writer.flush()
        self._mirror()

    def _mirror(self) -> None:
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                self.storage.write_bytes(f"{self.dest}/{name}", f.read())

    def close(self) -> None:
        """Flush the writer (its queue is written by a thread) and mirror the files a last time."""
        self.writer.close()
        self._mirror()
        shutil.rmtree(self.local, ignore_errors=True)


def write_curves_png(storage: Storage, run: str, students: Iterable[str]) -> str | None:
    """``{run}/training_curves.png`` from the finished students' histories → its path."""
    histories: dict[str, Any] = {}
    for name in students:
        history = load_torch(storage, f"{checkpoint_dir(run, name)}/final.pt").get("history")
        if history:
            histories[name] = history
    if not histories:
        return None
    rel = RunPaths(run).curves_png
    storage.write_bytes(rel, curves_png(histories))
    return rel
