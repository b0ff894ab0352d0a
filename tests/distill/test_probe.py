"""The linear probe (distill/probe.py): it finds a linearly separable labelling, and
scores a useless feature at chance."""

import numpy as np
import torch
from torch import nn

from distill.probe import encoder_features, fit_linear, probe_miou


class Identity(nn.Module):
    """An 'encoder' whose features are the coordinates, behind a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.norm(x.reshape(-1, 3)).reshape(x.shape)


def test_probe_separates_a_linear_labelling():
    g = torch.Generator().manual_seed(0)
    clouds = [torch.randn(200, 3, generator=g) * 3 + 5 for _ in range(6)]
    labels = [(c[:, 0] > 5).long() + (c[:, 1] > 5).long() * 2 for c in clouds]  # 4 quadrants
    encoder = Identity()
    feats = encoder_features(encoder, clouds)
    assert not encoder.training
    mean = torch.cat(feats).mean(0)
    assert float(mean.abs().max()) < 0.05  # statistics re-estimated on these clouds
    head = fit_linear(feats[:3], labels[:3], 4)
    scores = probe_miou(head, feats[3:], labels[3:], 4)
    assert min(scores) > 95.0


def test_probe_of_a_blind_feature_is_chance():
    g = torch.Generator().manual_seed(1)
    feats = [torch.zeros(100, 4) for _ in range(4)]
    labels = [torch.randint(0, 2, (100,), generator=g) for _ in range(4)]
    head = fit_linear(feats[:2], labels[:2], 2)
    assert np.mean(probe_miou(head, feats[2:], labels[2:], 2)) < 40.0
