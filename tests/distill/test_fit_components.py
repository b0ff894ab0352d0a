"""The components ``distil`` is assembled from (``distill.fit``): the score keeper chosen per
source, checkpointing's hand-over, validation's rank rule, and a streaming fit end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import TrainConfig
from distill.ema import WeightAverage
from distill.fit.scores import InMemoryScores, StreamedScores, score_keeper
from distill.fit.state import Checkpoints, DistilState
from distill.fit.validation import Validator
from distill.labels import LabelSpace
from distill.passes import make_optimizer
from distill.samples import prepare_samples
from distill.sources import InMemorySource, SampleSource
from distill.training import distil
from tests.distill.test_training import _model, make_shape, make_units

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CFG = TrainConfig(epochs=4, batch_size=3, bd_rounds=1, bd_trigger="epoch", bd_epoch=2, rescore="agreement")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    shapes = [make_shape(rng, f"stack{i}") for i in range(6)]
    units = {s.shape_id: make_units(rng, s) for s in shapes}
    space = LabelSpace.from_shapes(shapes)
    return space, prepare_samples(shapes, units, space)


class Streamed(SampleSource):
    """A streaming source (scores outside the state) over an in-memory list."""

    def __init__(self, inner: InMemorySource) -> None:
        self.inner, self.num_train, self.has_validation = inner, inner.num_train, inner.has_validation

    def train_batches(self, epoch, scores):
        assert scores == {}  # a streaming fit's state carries no scores
        return self.inner.train_batches(epoch, scores)

    def calibration_samples(self):
        return self.inner.calibration_samples()

    def reference_samples(self):
        return self.inner.reference_samples()

    def class_count_samples(self):
        return self.inner.class_count_samples()

    def validation_chunks(self):
        return self.inner.validation_chunks()


def _state(space, ema: float = 0.0) -> DistilState:
    model = _model(space)
    state = DistilState(model, *make_optimizer(model, CFG, 2), seed=0)
    if ema:
        state.average = WeightAverage(model, ema)
    return state


def test_the_score_keeper_follows_the_source(data):
    space, samples = data
    memory = InMemorySource(samples, 3, 0)
    keeper = score_keeper(memory, space, CFG, torch.device("cpu"))
    assert isinstance(keeper, InMemoryScores) and keeper.in_process
    assert not score_keeper(memory, space, CFG, torch.device("cpu"), rescore_externally=True).in_process
    assert isinstance(score_keeper(Streamed(memory), space, CFG, torch.device("cpu")), StreamedScores)

    class Pretends(Streamed):
        in_memory = True

    with pytest.raises(TypeError, match="InMemorySource"):
        score_keeper(Pretends(memory), space, CFG, torch.device("cpu"))


def test_in_memory_scores_start_fresh_or_check_a_resumed_state(data):
    space, samples = data
    source = InMemorySource(samples, 3, 0)
    keeper = score_keeper(source, space, CFG, torch.device("cpu"))
    state = _state(space)
    keeper.start(state, resumed=False)
    assert set(state.scores) == {s.shape_id for s in samples}
    assert source.pair_weights is state.pair_weights  # the source's samples read the state's
    del state.scores["stack0"]
    with pytest.raises(ValueError, match="shapes differ"):
        keeper.start(state, resumed=True)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_an_external_rescoring_stops_and_keeps_the_averaged_weights(data, ema):
    space, samples = data
    state, record = _state(space, ema), {}
    keeper = score_keeper(Streamed(InMemorySource(samples, 3, 0)), space, CFG, torch.device("cpu"))
    keeper.start(state, resumed=False)
    assert keeper.rescore(state.model, state, record) is True
    assert state.pending_rescore and record == {"rescore_pending": 1.0} and state.round == 0
    assert (state.rescore_snapshot is not None) == bool(ema)
    assert state.scores == {} and keeper.final_units(state) == {}


def test_checkpoints_restore_and_hand_over(data):
    space, _ = data
    state = _state(space)
    assert not Checkpoints().restore(state) and not Checkpoints().epoch_end(state)
    saved = []
    answers = iter([None, 1])
    hook = Checkpoints(on_epoch_end=lambda st: saved.append(st.epoch) or next(answers))
    assert hook.epoch_end(state) is False and hook.epoch_end(state) is True and saved == [0, 0]
    state.epoch = 3
    other = _state(space)
    assert Checkpoints(resume=state.state_dict()).restore(other) and other.epoch == 3


def test_a_streaming_fit_validates_on_rank_0_only(data):
    space, samples = data
    memory = InMemorySource(samples, 3, 0, select_val=True, world_size=2, rank=1)
    assert Validator(memory, space, torch.device("cpu"), 3, rank=1).scores_here
    assert not Validator(Streamed(memory), space, torch.device("cpu"), 3, rank=1).scores_here
    assert Validator(Streamed(memory), space, torch.device("cpu"), 3, rank=0).scores_here


def test_a_streaming_fit_stops_for_rescoring_and_returns_no_units(data):
    space, samples = data
    saved = {}
    cfg = CFG.with_steps(2)
    source = Streamed(InMemorySource(samples, 3, 0))
    result = distil(_model(space), source, space, cfg, on_epoch_end=lambda st: saved.update(s=st.state_dict()))
    assert result.pending_rescore and result.selected_epoch == 2 and result.units == {}
    assert saved["s"]["pending_rescore"] and saved["s"]["scores"] == {}
    assert result.history[-1]["rescore_pending"] == 1.0
