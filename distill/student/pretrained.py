"""Pretrained encoders: the file ``jobs/pretrain_encoder.py`` writes and the student loads.

``encoder.pt`` is ``encoder_bundle(...)``: the encoder's state dict and what it was trained
for (backbone, width, neighbours, normals, points per cloud), so a student of other
settings is refused before a tensor is touched (``check_encoder_bundle``), and
``load_pretrained_encoder`` refuses a partial load: a student never starts from an
encoder that is silently part random. A plain state dict (an encoder's, a whole
student's with ``encoder.`` keys, or ``{"model": ...}``) is accepted too, checked tensor
by tensor.

Pure torch, no IO beyond ``torch.load`` of bytes the caller read.
"""

from __future__ import annotations

import io
import logging
from typing import Any, NamedTuple

import torch
from torch import nn

from distill.config import ConfigError, StudentConfig

log = logging.getLogger(__name__)

ENCODER_FORMAT = "partdistill-encoder/1"
ARCHITECTURE_KEYS = ("backbone", "width", "k", "use_normals")
"""The student settings an encoder's weights and features depend on."""


class PretrainedReport(NamedTuple):
    """What ``load_pretrained_encoder`` did: keys loaded, missing, unexpected, shape-mismatched."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def encoder_bundle(encoder: nn.Module, student: StudentConfig, num_points: int, **info: Any) -> dict[str, Any]:
    """What ``encoder.pt`` holds: the encoder's weights and the settings it was trained for."""
    weights = getattr(encoder, "module", encoder).state_dict()
    return {
        "format": ENCODER_FORMAT,
        **{k: getattr(student, k) for k in ARCHITECTURE_KEYS},
        "num_points": int(num_points),
        "encoder": {k: v.detach().cpu() for k, v in weights.items()},
        **info,
    }


def read_encoder_file(data: bytes, where: str) -> dict[str, Any]:
    """The object in an encoder file's bytes; a file torch cannot read is a ConfigError."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(
            f"student.pretrained={where!r} is not a readable checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}) — point it at an encoder.pt of jobs/pretrain_encoder.py"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"student.pretrained={where!r}: expected a state dict, got {type(state).__name__}")
    return state


def check_encoder_bundle(bundle: dict[str, Any], student: StudentConfig, num_points: int, where: str) -> None:
    """Refuse an ``encoder.pt`` trained for other student settings or another point count."""
    if bundle.get("format") != ENCODER_FORMAT:
        return  # a plain state dict: checked tensor by tensor on load
    wanted = {**{k: getattr(student, k) for k in ARCHITECTURE_KEYS}, "num_points": num_points}
    differ = [k for k in wanted if bundle.get(k) != wanted[k]]
    if differ:
        was = ", ".join(f"{k}={bundle.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
        raise ConfigError(
            f"student.pretrained={where!r} was trained with {was}; this student has {now} — pretrain an "
            "encoder with this run's student.* and data.num_points, or set them to the encoder's"
        )


def encoder_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's state dict inside any accepted form of file."""
    if state.get("format") == ENCODER_FORMAT:
        return state["encoder"]
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_pretrained_encoder(model: nn.Module, state: dict[str, Any], where: str) -> PretrainedReport:
    """Load an encoder file's object (``read_encoder_file``) into ``model.encoder``.

    Every tensor of the model's encoder must come from the file with its shape: a missing
    or shape-mismatched tensor is a ConfigError naming them (the student would otherwise
    start part random). Tensors the encoder lacks are ignored with a warning.
    """
    state = encoder_state(state)
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    missing = sorted(k for k in own if k not in state)
    if missing or mismatched:
        first = (missing + mismatched)[:3]
        raise ConfigError(
            f"student.pretrained={where!r} does not fit this {type(encoder).__name__}: {len(missing)} tensors "
            f"missing, {len(mismatched)} of another shape (e.g. {', '.join(first)}) — pretrain an encoder "
            "with this run's student.* settings"
        )
    unexpected = sorted(k for k in state if k not in own)
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    report = PretrainedReport(loaded=sorted(own), missing=[], unexpected=unexpected, mismatched=[])
    if unexpected:
        log.warning("pretrained encoder %s: all %d tensors loaded; ignored %s", where, len(own), unexpected)
    else:
        log.info("pretrained encoder %s: all %d tensors loaded", where, len(own))
    return report


def freeze_encoder(model: nn.Module) -> int:
    """Fix the encoder's weights (no gradient; the optimiser skips them) → how many
    tensors were frozen. BatchNorm statistics are buffers and still follow the data."""
    params = list(model.encoder.parameters())  # type: ignore[union-attr]
    for p in params:
        p.requires_grad_(False)
    return len(params)


__all__ = [
    "ENCODER_FORMAT",
    "PretrainedReport",
    "check_encoder_bundle",
    "encoder_bundle",
    "encoder_state",
    "freeze_encoder",
    "load_pretrained_encoder",
    "read_encoder_file",
]
