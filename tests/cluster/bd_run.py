"""The small run the backward-distillation tests share: smoke, 3 categories × (2 + 1)
shapes in 2-shape parts (6 shape parts, 6 items), 4 epochs, re-scoring after epoch 2."""

import shutil

import torch

from cluster.config import load_config
from cluster.pipeline import extract_stage
from cluster.store.storage import Storage
from cluster.training.students import plan_students
from cluster.training.train import FitOutcome, fit_student, knowledge_dir, last_state, prepare_fit

RUN = "bd"
ARGS = [
    "--config",
    "smoke",
    "data.per_category=3",
    "train.epochs=4",
    f"run={RUN}",
    "cluster.backend=local",
    "cluster.part_shapes=2",  # 3 categories × (2 + 1) shapes: 6 shape parts, 6 items
]
CPU = torch.device("cpu")
CKPT_DIR = f"{RUN}/checkpoints/all"
CKPT = f"{CKPT_DIR}/last.pt"


def extract_run(root) -> None:
    """The run's shapes and round-0 knowledge under ``root`` (the ``bd_extracted`` fixture)."""
    cfg = load_config([*ARGS, f"storage.root={root}"])
    extract_stage(cfg, Storage.from_config(cfg.storage))


def pending_run(root, extracted, *overrides: str):
    """A copy of the extracted run under ``root`` whose student stopped after epoch 2
    (smoke: bd_epoch=2), awaiting re-scoring → (cfg, storage, plan)."""
    shutil.copytree(extracted / RUN, root / RUN)
    cfg = load_config([*ARGS, f"storage.root={root}", *overrides])
    storage = Storage.from_config(cfg.storage)
    (plan,) = plan_students(cfg, storage, f"{RUN}/shapes", knowledge_dir(RUN, 0))
    outcome = fit(cfg, storage, plan)
    assert outcome.rescore_due and outcome.info["epochs"] == 2
    return cfg, storage, plan


def fit(cfg, storage, plan) -> FitOutcome:
    """The student's next fit, from its ``last.pt``, in this process."""
    return fit_student(cfg, storage, plan, CPU, last_state(storage, CKPT_DIR))


def prepare(storage, plan, rescore_pass):
    """``prepare_fit`` on the student's ``last.pt``, as the training loop calls it → the
    re-scoring pass's summary (None when none ran)."""
    return prepare_fit(storage, plan, CKPT_DIR, last_state(storage, CKPT_DIR), rescore_pass)[1]
