"""Where a fit's unit scores live and who re-scores them (backward distillation,
docs/design.md §3): one ``ScoreKeeper``, chosen once at set-up by ``score_keeper``, so the
training loop reads the same for every source.

* ``InMemoryScores`` (an ``InMemorySource``): the scores and the point rules' pair weights
  live in ``DistilState`` (so in every checkpoint); re-scoring runs in this process
  (``distill.backward``), unless the caller asked to re-score externally; the fit returns
  every shape's units.
* ``StreamedScores`` (a streaming ``SampleSource``): the scores live in the round's score
  table, outside the state; re-scoring is always an external pass; the fit returns no units.

An external re-scoring (``await_external_rescoring``) stops the fit: the state is marked
``pending_rescore`` (with the averaged weights to predict with, when there is an average)
and the caller moves it on with ``distill.backward.apply_rescore`` and resumes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from distill.backward import rescore_samples, rescore_samples_with_rule, units_with_scores
from distill.config import TrainConfig
from distill.fit.state import DistilState, cpu_state
from distill.labels import LabelSpace
from distill.records import KnowledgeUnits
from distill.sources import InMemorySource, SampleSource

OnRescore = Callable[[int, dict[str, KnowledgeUnits]], None]
"""``on_rescore(round, units_by_shape_id)``: called after each in-process re-scoring."""


class ScoreKeeper(ABC):
    """Where a fit's unit scores live and who re-scores them (module docstring)."""

    @abstractmethod
    def start(self, state: DistilState, resumed: bool) -> None:
        """At set-up, after any resume: give a fresh ``state`` its initial scores, or check a
        resumed one's against the source."""

    @abstractmethod
    def rescore(self, model: nn.Module, state: DistilState, record: dict[str, float]) -> bool:
        """Backward distillation is due after this epoch (``model`` holds the weights that
        predict, BatchNorm re-calibrated): re-score, or prepare ``state`` for an external
        pass; note it in the epoch's ``record`` → whether the fit must stop for that pass."""

    @abstractmethod
    def final_units(self, state: DistilState) -> dict[str, KnowledgeUnits]:
        """The units, with their current scores, that the fit returns (by shape id)."""


def await_external_rescoring(model: nn.Module, state: DistilState, record: dict[str, float]) -> bool:
    """Mark ``state`` as waiting for an external re-scoring; with a weight average (applied to
    ``model`` now), keep the averaged weights the external pass predicts with → True (stop)."""
    if state.average is not None:
        state.rescore_snapshot = cpu_state(model)
    state.pending_rescore = True
    record["rescore_pending"] = 1.0
    return True


class InMemoryScores(ScoreKeeper):
    """An ``InMemorySource``'s scores, in ``DistilState.scores`` (pair weights in
    ``DistilState.pair_weights``, which the source reads its samples' pair weights from).

    in_process: re-score in this process with ``train.rescore`` (False: stop for an
    external pass, ``rescore_externally``) · on_rescore: called after each in-process
    re-scoring with the round and every shape's units.
    """

    def __init__(
        self,
        source: InMemorySource,
        space: LabelSpace,
        cfg: TrainConfig,
        device: torch.device,
        in_process: bool = True,
        on_rescore: OnRescore | None = None,
    ) -> None:
        self.source, self.space, self.cfg, self.device = source, space, cfg, device
        self.in_process, self.on_rescore = in_process, on_rescore

    def start(self, state: DistilState, resumed: bool) -> None:
        initial = self.source.initial_scores()
        if not resumed:
            state.scores = initial
        elif set(state.scores) != set(initial):
            raise ValueError("resume state's shapes differ from the samples given")
        self.source.pair_weights = state.pair_weights

    def rescore(self, model: nn.Module, state: DistilState, record: dict[str, float]) -> bool:
        if not self.in_process:
            return await_external_rescoring(model, state, record)
        cfg, every = self.cfg, self.source.all_samples(state.scores)
        if cfg.rescore == "agreement":
            state.scores = rescore_samples(model, every, self.space, state.scores, self.device, cfg.batch_size)
        else:
            state.scores, state.pair_weights = rescore_samples_with_rule(model, every, self.space, cfg, self.device)
            self.source.pair_weights = state.pair_weights
        state.round += 1
        state.round_start = len(state.losses)
        record["rescored"] = 1.0
        if self.on_rescore is not None:
            self.on_rescore(state.round, units_with_scores(every, state.scores, state.round))
        return False

    def final_units(self, state: DistilState) -> dict[str, KnowledgeUnits]:
        return units_with_scores(self.source.all_samples(state.scores), state.scores, state.round)


class StreamedScores(ScoreKeeper):
    """A streaming source's scores, in the round's score table (the source reads them with
    its batches): nothing in the state, every re-scoring external, no units returned."""

    def start(self, state: DistilState, resumed: bool) -> None:
        pass

    def rescore(self, model: nn.Module, state: DistilState, record: dict[str, float]) -> bool:
        return await_external_rescoring(model, state, record)

    def final_units(self, state: DistilState) -> dict[str, KnowledgeUnits]:
        return {}


def score_keeper(
    source: SampleSource,
    space: LabelSpace,
    cfg: TrainConfig,
    device: torch.device,
    rescore_externally: bool = False,
    on_rescore: OnRescore | None = None,
) -> ScoreKeeper:
    """The ``ScoreKeeper`` of ``source``: ``InMemoryScores`` for an ``InMemorySource``
    (re-scoring in this process unless ``rescore_externally``), else ``StreamedScores``."""
    if isinstance(source, InMemorySource):
        return InMemoryScores(source, space, cfg, device, not rescore_externally, on_rescore)
    if source.in_memory:
        raise TypeError(f"{type(source).__name__}: an in-memory source is an InMemorySource (distill.sources)")
    return StreamedScores()
