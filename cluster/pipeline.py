"""The stages of a run, chained: ingest → extract → train → evaluate.

Each job in ``jobs/`` is one of these functions under ``cluster.job.run_job``. Stages are
idempotent, so the chain can always be re-run: finished shapes, knowledge and students
are skipped. ``cluster.backend`` picks Ray (actor pools, Ray Train) or this process.

Where things go, under ``{storage.root}/{run}/``:
``shapes/`` and ``knowledge/round_{k}/`` for the distillation shapes; in ``mode=pre`` the
evaluated shapes live apart in ``eval/shapes/`` and ``eval/knowledge/round_0/`` (the
teacher's votes on them are the baselines); in ``mode=tta`` the distillation shapes are
the evaluated ones.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cluster.config import Config
from cluster.ingest import ingest
from cluster.storage import Storage
from distill.config import DataConfig

log = logging.getLogger(__name__)


def use_ray(cfg: Config) -> bool:
    """Whether this job runs its stages on Ray (see ``ClusterConfig.backend``)."""
    if cfg.cluster.backend == "auto":
        return bool(cfg.cluster.address or os.environ.get("RAY_ADDRESS"))
    return cfg.cluster.backend == "ray"


def _connect(cfg: Config) -> None:
    from cluster.runtime import configure_data_context, connect

    connect(cfg.cluster)
    configure_data_context(cfg.progress)


def dirs(cfg: Config, evaluated: bool = False) -> tuple[str, str]:
    """(shapes dir, teacher-knowledge dir) of the distillation or the evaluated shapes."""
    prefix = "eval/" if evaluated and cfg.mode == "pre" else ""
    return f"{cfg.run}/{prefix}shapes", f"{cfg.run}/{prefix}knowledge/round_0"


def ensure_shapes(cfg: Config, storage: Storage, data: DataConfig, shapes_dir: str) -> dict[str, Any]:
    """Make sure ``shapes_dir`` holds ``data``'s shapes (ingest or generate what is missing)."""
    if data.source == "table":
        return {"shapes_from": data.path}
    if data.source == "generated":
        from cluster.generate_ray import generate_shapes

        return generate_shapes(cfg, storage, shapes_dir)
    return ingest(cfg, storage, data, shapes_dir)


def extract(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    from cluster.extract_ray import extract_local, extract_on_ray

    if use_ray(cfg):
        _connect(cfg)
        return extract_on_ray(cfg, storage, shapes_dir, units_dir)
    return extract_local(cfg, storage, shapes_dir, units_dir)


def baselines(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """Both voting baselines' mIoU on the labelled shapes of ``shapes_dir`` (streamed)."""
    from cluster.evaluate import baselines as voting_baselines

    return voting_baselines(cfg, storage, shapes_dir, units_dir)


def extract_stage(cfg: Config, storage: Storage, evaluated: bool = False) -> dict[str, Any]:
    """Shapes (ingested first when needed) → teacher knowledge, with the voting baselines."""
    data = cfg.eval.data if evaluated and cfg.mode == "pre" else cfg.data
    shapes_dir, units_dir = dirs(cfg, evaluated)
    if data.source == "table":
        shapes_dir = data.path
    summary = {"ingest": ensure_shapes(cfg, storage, data, shapes_dir)}
    summary["extract"] = extract(cfg, storage, shapes_dir, units_dir)
    summary["baselines"] = baselines(cfg, storage, shapes_dir, units_dir)
    return summary


def train_stage(cfg: Config, storage: Storage, fault_hook: Any = None) -> dict[str, Any]:
    """The run's students from its knowledge (``fault_hook``: tests only, ``cluster.train_ray``)."""
    shapes_dir, units_dir = dirs(cfg)
    if cfg.data.source == "table":
        shapes_dir = cfg.data.path
    if use_ray(cfg):
        from cluster.train_ray import train_on_ray

        _connect(cfg)
        return train_on_ray(cfg, storage, shapes_dir, units_dir, fault_hook)
    from cluster.train import train_local

    return train_local(cfg, storage, shapes_dir, units_dir)


def evaluate_stage(cfg: Config, storage: Storage) -> dict[str, Any]:
    """Students and baselines on the evaluated shapes (extracting their knowledge first)."""
    from cluster.evaluate import evaluate_run

    summary: dict[str, Any] = {}
    if cfg.mode == "pre":
        summary["eval_extract"] = extract_stage(cfg, storage, evaluated=True)
    shapes_dir, units_dir = dirs(cfg, evaluated=True)
    if cfg.mode == "tta" and cfg.data.source == "table":
        shapes_dir = cfg.data.path
    if cfg.mode == "pre" and cfg.eval.data.source == "table":
        shapes_dir = cfg.eval.data.path
    return {**evaluate_run(cfg, storage, shapes_dir, units_dir), **summary}


def pretrain(cfg: Config, storage: Storage) -> dict[str, Any]:
    """The whole pipeline; the summary keeps the headline numbers at the top."""
    extracted = extract_stage(cfg, storage)
    trained = train_stage(cfg, storage)
    evaluated = evaluate_stage(cfg, storage) if cfg.eval.enabled else {}
    head = {k: evaluated[k] for k in ("voting", "voting_nearest", "student") if k in evaluated}
    if head:
        print("\n" + evaluated["table"] + "\n", flush=True)
    return {
        "mode": cfg.mode,
        **head,
        "evaluated_shapes": evaluated.get("evaluated_shapes", 0),
        "per_category": evaluated.get("per_category", {}),
        "extract": extracted,
        "train": trained,
    }
