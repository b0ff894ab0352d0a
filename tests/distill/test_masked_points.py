"""Masked point modelling (distill/masked_points.py) and its training loop
(distill/encoder_training.py): hand-computed Chamfer, the masking's guarantees, the
gradient reaching the encoder, and an exact resume."""

import pytest
import torch

from distill.config import ConfigError, EncoderConfig
from distill.encoder_training import EncoderFitState, fit_encoder
from distill.masked_points import MaskedPointModel, Masking, chamfer_l2, mask_patches
from distill.student.pointnet2 import PointNet2Encoder


def clouds(b: int = 3, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(1, keepdim=True)


def test_chamfer_by_hand():
    pred = torch.tensor([[0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # pred → target: 1; target → pred: (1 + 4) / 2
    assert float(chamfer_l2(pred, target)) == pytest.approx(3.5)
    x = clouds(1, 32)[0]
    assert float(chamfer_l2(x, x[torch.randperm(32)])) == pytest.approx(0.0, abs=1e-7)


def test_masking_sizes_and_errors():
    m = Masking(2048, 32, 0.6)
    assert (m.groups, m.hidden, m.visible) == (64, 38, 2048 - 38 * 32)
    with pytest.raises(ValueError, match="visible"):
        Masking(64, 16, 0.9)
    with pytest.raises(ValueError, match="mask_ratio"):
        Masking(2048, 32, 1.0)


def test_mask_patches_hides_what_it_says():
    xyz = clouds(2, 256)
    masking = Masking(256, 16, 0.5)
    visible, centres, patches = mask_patches(xyz, masking, torch.Generator().manual_seed(1))
    assert visible.shape == (2, masking.visible)
    assert centres.shape == (2, masking.hidden, 3) and patches.shape == (2, masking.hidden, 16, 3)
    for b in range(2):
        hidden_points = patches[b] + centres[b].unsqueeze(1)  # absolute positions of hidden points
        seen = xyz[b][visible[b]]
        d = torch.cdist(hidden_points.reshape(-1, 3), seen)
        assert float(d.min()) > 0.0  # no hidden point is fed to the encoder
        assert len(set(visible[b].tolist())) == masking.visible  # no point twice
        # each patch is its centre's nearest points: the centre itself is in it
        assert float(patches[b].norm(dim=-1).min(dim=-1).values.max()) == pytest.approx(0.0, abs=1e-6)
    again = mask_patches(xyz, masking, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], visible) and torch.equal(again[2], patches)


def test_loss_trains_the_encoder():
    torch.manual_seed(0)
    model = MaskedPointModel(PointNet2Encoder(3, 8, 8), Masking(256, 16, 0.5), hidden=64)
    xyz = clouds(4, 256)
    loss = model(xyz, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.sa1.pos.weight.grad is not None and model.encoder.sa1.pos.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(30):  # one batch, the same masks: the loss must fall
        opt.zero_grad()
        loss = model(xyz, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first


def _fit(epochs_run: int, resume=None, states=None):
    torch.manual_seed(0)
    model = MaskedPointModel(PointNet2Encoder(3, 8, 8), Masking(256, 16, 0.5), hidden=32)
    data = [clouds(4, 256, seed=s) for s in range(3)]
    cfg = EncoderConfig(epochs=3, batch_size=4, warmup_steps=2)

    def batches(epoch):
        for i in range(len(data)):
            yield data[(i + epoch) % len(data)], None
        if epoch + 1 == epochs_run:
            raise KeyboardInterrupt  # the fit is killed at the end of this epoch's data

    settings = {"width": 8}
    try:
        fit_encoder(model, batches, cfg, 3, torch.device("cpu"), 7, settings, resume, on_epoch_end=states.append)
    except KeyboardInterrupt:
        pass
    return model


def test_resume_is_exact():
    straight: list[EncoderFitState] = []
    full = _fit(99, states=straight)
    assert [s.epoch for s in straight] == [1, 2, 3]
    killed: list[EncoderFitState] = []
    _fit(2, states=killed)  # killed in epoch 2, after the checkpoint of epoch 1
    assert [s.epoch for s in killed] == [1]
    state = EncoderFitState.from_dict(killed[-1].to_dict(), "last.pt")
    resumed: list[EncoderFitState] = []
    model = _fit(99, resume=state, states=resumed)
    assert [s.epoch for s in resumed] == [2, 3]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    assert [h["loss"] for h in resumed[-1].history] == pytest.approx([h["loss"] for h in straight[-1].history])


def test_resume_refuses_other_settings():
    state = EncoderFitState({}, {}, {}, 1, {"width": 16})
    with pytest.raises(ConfigError, match="width=16.*width=8"):
        _fit(99, resume=state, states=[])
    with pytest.raises(ConfigError, match="not an encoder-pretraining checkpoint"):
        EncoderFitState.from_dict({"model": {}}, "x/last.pt")
