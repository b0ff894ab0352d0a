"""The 3D students: per-point part classifiers, xyz (B, N, 3) → logits (B, N, num_parts).

Registry (docs/design.md §5.7): ``STUDENTS[name](num_parts, width, k, use_normals, dropout,
num_categories)``; ``build_student(cfg, num_parts)`` builds one from ``StudentConfig`` (randomly
initialised: the training stage loads ``student.pretrained`` into a fresh student,
``distill.student.pretrained``). Every student has an ``encoder`` (per-point
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

from torch import nn

from distill.config import StudentConfig
from distill.student.aligned import PoseAligned
from distill.student.dgcnn import DGCNNSeg
from distill.student.pointnet import PointNetSeg
from distill.student.pointnet2 import PointNet2Seg
from distill.student.pretrained import PretrainedReport, load_pretrained_encoder

log = logging.getLogger(__name__)

STUDENTS: dict[str, Callable[..., nn.Module]] = {
    "pointnet": PointNetSeg,
    "pointnet2": PointNet2Seg,
    "dgcnn": functools.partial(DGCNNSeg, dynamic=True),
    "dgcnn_static": functools.partial(DGCNNSeg, dynamic=False),
}


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
    if cfg.align == "cube":
        model = PoseAligned(model, num_categories)
    return model


__all__ = ["STUDENTS", "build_student", "load_pretrained_encoder", "PretrainedReport"]
