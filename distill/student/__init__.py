"""The 3D students: per-point part classifiers, xyz (B, N, 3) → logits (B, N, num_parts).

Registry (docs/design.md §5.7): ``STUDENTS[name](num_parts, width, k, use_normals, dropout,
num_categories)``; ``build_student(cfg, num_parts)`` builds one from ``StudentConfig`` and
loads an optional pretrained encoder. Every student has an ``encoder`` (per-point
features) and a ``head`` (features [+ category embedding] → logits), and is called as
``model(xyz, normals=None, category=None)``. With ``student.align=cube`` the student is
wrapped in ``PoseAligned``, which turns each cloud into its category's common pose first
(its references are fitted by ``distill.training.distil`` before training).

Measured on this 2-core CPU (bench/student.py): see the table in that file's docstring.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from distill.config import StudentConfig
from distill.student.aligned import PoseAligned
from distill.student.dgcnn import DGCNNSeg
from distill.student.pointnet import PointNetSeg
from distill.student.pointnet2 import PointNet2Seg

log = logging.getLogger(__name__)

STUDENTS: dict[str, Callable[..., nn.Module]] = {
    "pointnet": PointNetSeg,
    "pointnet2": PointNet2Seg,
    "dgcnn": functools.partial(DGCNNSeg, dynamic=True),
    "dgcnn_static": functools.partial(DGCNNSeg, dynamic=False),
}


class PretrainedReport(NamedTuple):
    """What ``load_pretrained_encoder`` did: keys loaded, missing, unexpected, shape-mismatched."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def build_student(cfg: StudentConfig, num_parts: int, num_categories: int = 1) -> nn.Module:
    """A student from its config.

    num_parts: the logit slots (one category's parts, or the union of several categories'
    parts for a multi-category student) · num_categories > 1 adds a category embedding,
    and the model then needs ``category (B,)`` at call time.
    """
    if cfg.backbone not in STUDENTS:
        raise ValueError(f"student.backbone={cfg.backbone!r} is not one of {', '.join(sorted(STUDENTS))}")
    if num_parts < 1:
        raise ValueError(f"num_parts={num_parts} must be >= 1")
    if num_categories < 1:
        raise ValueError(f"num_categories={num_categories} must be >= 1")
    extra = {}
    if cfg.category_input:
        if cfg.backbone != "pointnet2":
            raise ValueError(f"student.category_input is a pointnet2 option, not {cfg.backbone}'s")
        extra["category_input"] = True
    model = STUDENTS[cfg.backbone](
        num_parts=num_parts,
        width=cfg.width,
        k=cfg.k,
        use_normals=cfg.use_normals,
        dropout=cfg.dropout,
        num_categories=num_categories,
        **extra,
    )
    if cfg.pretrained:
        report = load_pretrained_encoder(model, cfg.pretrained)
        model.pretrained_report = report  # type: ignore[assignment]
    if cfg.align == "cube":
        model = PoseAligned(model, num_categories)
    return model


def load_pretrained_encoder(model: nn.Module, path: str) -> PretrainedReport:
    """Load an encoder state dict into ``model.encoder`` (strict=False) and report keys.

    Accepts a plain encoder state dict, one whose keys start with ``encoder.`` (a whole
    student's state dict), or ``{"model": state_dict}`` / ``{"state_dict": ...}``.
    Tensors whose shape differs from the model's are skipped and reported as mismatched
    (``load_state_dict`` would raise on them even with strict=False). Logs a warning
    naming missing / unexpected / mismatched keys; raises ``ValueError`` when nothing at
    all could be loaded (almost surely the wrong file).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"student.pretrained={path!r}: expected a state dict, got {type(state).__name__}")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    result = encoder.load_state_dict(usable, strict=False)
    report = PretrainedReport(
        loaded=sorted(usable),
        missing=sorted(result.missing_keys),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=sorted(mismatched),
    )
    if not [k for k in usable if not k.endswith("num_batches_tracked")]:  # BN step counters prove nothing
        raise ValueError(
            f"student.pretrained={path!r}: no key matches the {type(encoder).__name__} "
            f"(first keys in file: {sorted(state)[:5]})"
        )
    if report.missing or report.unexpected or report.mismatched:
        log.warning(
            "pretrained encoder %s: loaded %d tensors; missing %s; unexpected %s; shape-mismatched %s",
            path,
            len(report.loaded),
            report.missing,
            report.unexpected,
            report.mismatched,
        )
    else:
        log.info("pretrained encoder %s: all %d tensors loaded", path, len(report.loaded))
    return report


__all__ = ["STUDENTS", "build_student", "load_pretrained_encoder", "PretrainedReport"]
