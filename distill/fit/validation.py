"""Checkpoint selection without test labels (``train.select=val``): after each epoch the
student is scored on the source's held-out shapes against the teacher's original units,
the best snapshot is kept in ``DistilState``, and the fit ends on it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from distill.backward import units_of
from distill.fit.state import DistilState, cpu_state
from distill.labels import LabelSpace
from distill.passes import predict_samples, unwrap
from distill.rescore import knowledge_agreement
from distill.samples import ShapeSample
from distill.sources import SampleSource


def validation_score(
    model: nn.Module, chunks: Iterable[Sequence[ShapeSample]], device: torch.device | str, space: LabelSpace, bs: int
) -> float:
    """Score-weighted agreement of the student with the teacher's original units."""
    hits = total = 0.0
    for chunk in chunks:
        for s, pred in zip(chunk, predict_samples(model, chunk, device, space, bs)):
            h, t = knowledge_agreement(units_of(s, space), pred)
            hits, total = hits + h, total + t
    return hits / total if total else float("nan")


class Validator:
    """Scores each epoch on ``source``'s validation shapes and keeps the best snapshot.

    rank: this worker's. Every worker of an in-memory source scores (each holds the
    held-out shapes); a streaming fit scores on rank 0 only: it alone keeps and saves the
    best snapshot, and the other workers need not read the held-out parts.
    """

    def __init__(
        self, source: SampleSource, space: LabelSpace, device: torch.device, batch_size: int, rank: int
    ) -> None:
        self.source, self.space, self.device, self.batch_size = source, space, device, batch_size
        self.scores_here = source.has_validation and (rank == 0 or source.in_memory)

    def score(self, model: nn.Module, state: DistilState, record: dict[str, float]) -> None:
        """Score ``model`` (eval statistics current) into ``record['val_agreement']``; a new
        best becomes ``state``'s snapshot."""
        if not self.scores_here:
            return
        val = validation_score(model, self.source.validation_chunks(), self.device, self.space, self.batch_size)
        record["val_agreement"] = val
        if val > state.best_score:
            state.best_score, state.best_epoch = val, state.epoch
            state.best_model = cpu_state(model)

    def select(self, model: nn.Module, state: DistilState) -> int:
        """Load the best snapshot into ``model`` where there is one → the selected epoch (else
        the last, whose weights ``model`` holds)."""
        if self.source.has_validation and state.best_model is not None:
            unwrap(model).load_state_dict(state.best_model)
            return state.best_epoch
        return state.epoch
