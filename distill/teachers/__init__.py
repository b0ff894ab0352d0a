"""Teacher registry: ``teacher.name`` → a class with ``predict(views, shape)``.

Imports are lazy so that choosing the simulated teacher never loads transformers, and
``distill.config`` takes its list of names from ``TEACHERS`` at no cost. The teacher
protocol and prediction type are ``distill.teachers.base``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no run-time imports: distill.config reads TEACHERS, and loading a config stays cheap
    from distill.config import TeacherConfig
    from distill.teachers.base import Teacher

# name → (module, class). Each class is built as ``cls(cfg, seed=seed)``.
TEACHERS: dict[str, tuple[str, str]] = {
    "simulated": ("distill.teachers.simulated", "SimulatedTeacher"),
    "grounding_dino": ("distill.teachers.grounding_dino", "GroundingDinoTeacher"),
    "owlv2": ("distill.teachers.owlv2", "Owlv2Teacher"),
    "clipseg": ("distill.teachers.clipseg", "ClipSegTeacher"),
    "grounded_sam": ("distill.teachers.grounded_sam", "GroundedSamTeacher"),
}


def build_teacher(cfg: TeacherConfig, seed: int = 0) -> Teacher:
    """The teacher named by ``cfg.name``, loaded and ready."""
    if cfg.name not in TEACHERS:
        raise ValueError(f"teacher.name={cfg.name!r} is unknown; choose one of {', '.join(TEACHERS)}")
    module, cls = TEACHERS[cfg.name]
    return getattr(importlib.import_module(module), cls)(cfg, seed=seed)


__all__ = ["TEACHERS", "build_teacher"]
