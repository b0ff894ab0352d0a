"""The weights' moving average (``train.ema``)."""

import pytest
import torch
from torch import nn

from distill.ema import WeightAverage


def test_average_follows_the_weights_and_swaps_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    avg = WeightAverage(model, decay=0.5)
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update(model)  # step 0: d = min(0.5, 1/10) = 0.1 → 0.9 of the way to the new weights
    for k in start:
        torch.testing.assert_close(avg.shadow[k], start[k] + 0.9)
    raw = {k: p.detach().clone() for k, p in model.named_parameters()}
    with avg.applied(model):
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), start[k] + 0.9)
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), raw[k])
    other = WeightAverage(model, decay=0.5)
    other.load_state_dict(avg.state_dict())
    assert other.steps == 1 and all(torch.equal(other.shadow[k], avg.shadow[k]) for k in avg.shadow)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
