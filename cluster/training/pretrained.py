"""The student's side of a pretrained encoder: ``student.pretrained`` found, checked, loaded.

The value names a run of this storage (its ``encoder/encoder.pt``, ``cluster.training.encoder``), a
path under the storage root, or a local file. ``check_pretrained`` reads and loads it into
a throw-away student at the start of a job, so a missing, unreadable or mismatched file
is one line before any work; ``load_encoder_into`` starts a fresh student from it.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from cluster.config import Config
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from distill.errors import NotFoundError
from distill.student import build_student
from distill.student.pretrained import check_encoder_bundle, freeze_encoder, load_pretrained_encoder, read_encoder_file

"""Where a run's finished encoder is, under the run (``cluster.training.encoder.encoder_file``)."""


def read_pretrained(storage: Storage, value: str) -> tuple[dict[str, Any], str]:
    """``student.pretrained``'s file → (its object, where it was read). The value is a run
    of this storage (its ``encoder/encoder.pt``), a path under the storage root, or a
    local file."""
    root = storage.uri("")
    if "/" not in value and not value.endswith(".pt"):
        candidates = [RunPaths(value).encoder_file]  # a run name (never the run's folder itself)
    else:
        candidates = [value[len(root) :].lstrip("/") if root and value.startswith(root) else value]
    for c in candidates:
        if c and storage.exists(c):
            return read_encoder_file(storage.read_bytes(c), storage.uri(c)), storage.uri(c)
    if os.path.isfile(value):
        with open(value, "rb") as f:
            return read_encoder_file(f.read(), value), value
    raise NotFoundError(
        f"student.pretrained={value!r}: no run of that name with an encoder under {root or 'storage.root'}, and no such "
        "file — run python jobs/pretrain_encoder.py run=<name> first, or give the path of its encoder.pt"
    )


def load_encoder_into(cfg: Config, storage: Storage, model: nn.Module) -> dict[str, Any]:
    """Start a fresh student from ``student.pretrained`` (checked against its settings)
    and freeze it when ``student.freeze_encoder`` → a small report for the summary."""
    state, where = read_pretrained(storage, cfg.student.pretrained)
    check_encoder_bundle(state, cfg.student, cfg.data.num_points, where)
    report = load_pretrained_encoder(model, state, where)
    return {"pretrained": where, "tensors": len(report.loaded)}


def check_pretrained(cfg: Config, storage: Storage) -> None:
    """Refuse a bad ``student.pretrained`` before any work: the file is read, checked and
    loaded into a throw-away student (a missing, unreadable or mismatched encoder is one
    line at the start of the job, not after the teacher's pass)."""
    if cfg.student.pretrained:
        load_encoder_into(cfg, storage, build_student(cfg.student, 1))


def apply_freeze(cfg: Config, model: nn.Module) -> int:
    """``student.freeze_encoder``: the encoder's weights out of training (0 when off)."""
    return freeze_encoder(model) if cfg.student.freeze_encoder else 0


__all__ = ["apply_freeze", "check_pretrained", "load_encoder_into", "read_pretrained"]
