"""Student checkpoints on the run's storage: ``{run}/checkpoints/{student}/``.

``last.pt`` is the resumable training state (written every ``train.checkpoint_every``
epochs); ``final.pt`` is the selected model of a finished training, with everything
needed to use it without the config that made it (label space, student config). A
student whose ``final.pt`` exists is done: a re-run skips it.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from distill.config import StudentConfig
from distill.errors import NotFoundError
from distill.labels import LabelSpace
from distill.student import build_student

FORMAT = "partdistill.student/1"


def checkpoint_dir(run: str, student: str) -> str:
    return RunPaths(run).checkpoints(student)


def student_name(space: LabelSpace, per_category: bool) -> str:
    """``all`` for one student over every category, else the category's name."""
    return space.categories[0] if per_category else "all"


def save_torch(storage: Storage, rel: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(rel, buf.getvalue())


def load_torch(storage: Storage, rel: str) -> Any:
    return torch.load(io.BytesIO(storage.read_bytes(rel)), map_location="cpu", weights_only=False)


def final_bundle(model: nn.Module, space: LabelSpace, student_cfg: StudentConfig, **info: Any) -> dict[str, Any]:
    """What ``final.pt`` holds: the model's weights, its label space and student config."""
    weights = getattr(model, "module", model).state_dict()
    return {
        "format": FORMAT,
        "space": space.to_dict(),
        "student_config": asdict(student_cfg),
        "model": {k: v.detach().cpu() for k, v in weights.items()},
        **info,
    }


def list_students(storage: Storage, run: str) -> list[str]:
    """Students of a run with a finished ``final.pt``."""
    return [
        n for n in storage.listdir(RunPaths(run).checkpoints()) if storage.exists(checkpoint_dir(run, n), "final.pt")
    ]


def load_student(storage: Storage, run: str, student: str) -> tuple[nn.Module, LabelSpace, dict[str, Any]]:
    """A finished student, ready for ``distill.passes.predict`` (eval mode, CPU)."""
    rel = f"{checkpoint_dir(run, student)}/final.pt"
    if not storage.exists(rel):
        raise NotFoundError(f"{storage.uri(rel)}: no finished student {student!r} — run jobs/train.py first")
    bundle = load_torch(storage, rel)
    if bundle.get("format") != FORMAT:
        raise ValueError(f"{storage.uri(rel)}: not a {FORMAT} checkpoint")
    return model_from_bundle(bundle) + (bundle,)


def model_from_bundle(bundle: dict[str, Any]) -> tuple[nn.Module, LabelSpace]:
    space = LabelSpace.from_dict(bundle["space"])
    # The weights are the bundle's: no encoder file to read again, nothing to freeze.
    cfg = StudentConfig(**{**bundle["student_config"], "pretrained": "", "freeze_encoder": False})
    model = build_student(cfg, space.num_slots, space.num_categories)
    model.load_state_dict(bundle["model"])
    model.eval()
    return model, space
