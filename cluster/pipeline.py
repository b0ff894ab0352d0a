"""The stages of a run, chained: ingest → extract → train → evaluate.

Each job in ``jobs/`` is one of these functions under ``cluster.job.run_job``. Stages are
idempotent, so the chain can always be re-run: finished shapes, knowledge and students
are skipped. ``cluster.backend`` picks Ray or this process (``cluster.runtime.connect.use_ray``):
every pass over shape parts runs through ``cluster.passes.runner``, which asks it once; the
fits run on Ray Train (``cluster.training.train_ray``, ``cluster.training.encoder_ray``) or here.

Where things go is ``cluster.store.paths``: in ``mode=pre`` the evaluated shapes live apart in
``eval/`` (the teacher's votes on them are the baselines); in ``mode=tta`` the
distillation shapes are the evaluated ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Callable
from typing import Any

from cluster.config import Config
from cluster.passes.ingest import ingest
from cluster.runtime.connect import join_ray, use_ray
from cluster.store.paths import distill_tables, evaluated_tables
from cluster.store.storage import Storage
from cluster.training.pretrained import check_pretrained
from distill.config import ConfigError, DataConfig
from distill.errors import SEPARATOR

log = logging.getLogger(__name__)


def timed(name: str, step: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``step``'s summary with when it started (``started_at``, epoch seconds) and its wall
    ``seconds``: a run's summary says where its time went, stage by stage. The start and
    the end are logged as ``stage <name> started at <t>`` / ``stage <name> done at <t>``,
    so an interrupted run's log still says how far each stage got."""
    started = time.time()
    log.info("stage %s started at %.3f", name, started)
    summary = step(*args, **kwargs)
    done = time.time()
    log.info("stage %s done at %.3f (%.1f s)", name, done, done - started)
    return {**summary, "started_at": round(started, 3), "seconds": round(done - started, 2)}


def ensure_shapes(cfg: Config, storage: Storage, data: DataConfig, shapes_dir: str) -> dict[str, Any]:
    """Make sure ``shapes_dir`` holds ``data``'s shapes (ingest or generate what is missing)."""
    if data.source == "table":
        return {"shapes_from": data.path}
    if data.source == "generated":
        return generate_shapes(cfg, storage, shapes_dir)
    return ingest(cfg, storage, data, shapes_dir)


def generate_shapes(cfg: Config, storage: Storage, table_dir: str | None = None) -> dict[str, Any]:
    """Make the shape table ``table_dir`` (default ``{run}/{generation.output}``) as configured."""
    from cluster.passes.generate import generate

    return generate(cfg, storage, table_dir)


TEACHER_FILE = "_teacher.json"
"""Beside the knowledge parts: the teacher and render settings they were extracted with."""
TEACHER_KEYS = ("name", "model", "sam_model", "preset", "output", "view_correlation", "score_threshold",
                "whole_object_fraction", "prompt_template", "nms_iou")  # fmt: skip
RENDER_KEYS = ("views", "num_views", "image_size", "distance", "fov_deg", "point_radius", "depth_tolerance",
               "point_visibility")  # fmt: skip


def teacher_settings(cfg: Config) -> dict[str, Any]:
    """The settings that shape a knowledge unit (not where or how fast it is computed)."""
    return {
        **{f"teacher.{k}": getattr(cfg.teacher, k) for k in TEACHER_KEYS},
        **{f"render.{k}": getattr(cfg.render, k) for k in RENDER_KEYS},
    }


def check_teacher(cfg: Config, storage: Storage, units_dir: str) -> None:
    """Refuse to add knowledge to ``units_dir`` with other teacher or render settings than
    its parts were extracted with (a silent mix of two teachers); record them on first use."""
    at = posixpath.join(units_dir, TEACHER_FILE)
    now = teacher_settings(cfg)
    if storage.exists(at):
        then = storage.read_json(at)
        changed = sorted(k for k in now if k in then and then[k] != now[k])
        if changed:
            was = ", ".join(f"{k}={then[k]!r}" for k in changed)
            asked = ", ".join(f"{k}={now[k]!r}" for k in changed)
            raise ConfigError(
                f"{storage.uri(units_dir)} was extracted with {was}; this run asks {asked}"
                f"{SEPARATOR}use another run name for other teacher settings, or delete that folder to extract anew"
            )
        if all(k in then for k in now):
            return
    storage.write_json(at, now)


def extract(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """Teacher knowledge of the shapes of ``shapes_dir`` into ``units_dir``, on Ray or here
    (refused when the folder holds another teacher's knowledge, ``check_teacher``)."""
    from cluster.passes.extract import extract as extract_parts

    check_teacher(cfg, storage, units_dir)
    return extract_parts(cfg, storage, shapes_dir, units_dir)


BASELINES = "_baselines.json"
"""Beside the knowledge parts: the voting baselines last computed on them, and their key."""


def baselines(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> dict[str, Any]:
    """The voting baselines' mIoU on the labelled shapes of ``shapes_dir`` (streamed).

    A pass over every shape, so its result is kept in ``{units_dir}/_baselines.json`` under
    a key of the two tables' part names (each a digest of the ids it holds) and of the
    settings that shape the vote: a re-run of an interrupted job reads it back instead of
    voting again, and any new part or changed setting computes it anew."""
    from cluster.passes.evaluate import baselines as voting_baselines

    key = baselines_key(cfg, storage, shapes_dir, units_dir)
    cached_at = posixpath.join(units_dir, BASELINES)
    if storage.exists(cached_at):
        try:
            cached = storage.read_json(cached_at)
            if cached.get("key") == key:
                log.info("voting baselines of %s: unchanged parts, read back", storage.uri(units_dir))
                return cached["baselines"]
        except (ValueError, TypeError, AttributeError, KeyError):
            log.warning("%s is unreadable: the baselines are computed again", storage.uri(cached_at))
    result = voting_baselines(cfg, storage, shapes_dir, units_dir)
    storage.write_json(cached_at, {"key": key, "baselines": result})
    return result


def baselines_key(cfg: Config, storage: Storage, shapes_dir: str, units_dir: str) -> str:
    """Digest of the parts of both tables and of every setting but training's and Ray's."""
    from cluster.config import to_dict
    from cluster.passes.evaluate import BASELINE_METHODS

    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("train", "student", "cluster", "progress")}
    parts = [storage.list_parts(shapes_dir), storage.list_parts(units_dir)]
    text = json.dumps({"settings": settings, "parts": parts, "methods": BASELINE_METHODS}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def extract_stage(cfg: Config, storage: Storage, evaluated: bool = False) -> dict[str, Any]:
    """Shapes (ingested first when needed) → teacher knowledge, with the voting baselines."""
    apart = evaluated and cfg.mode == "pre"
    data = cfg.eval.data if apart else cfg.data
    shapes_dir, units_dir = evaluated_tables(cfg) if evaluated else distill_tables(cfg)
    prefix = "eval/" if apart else ""
    summary = {"ingest": timed(f"{prefix}ingest", ensure_shapes, cfg, storage, data, shapes_dir)}
    summary["extract"] = timed(f"{prefix}extract", extract, cfg, storage, shapes_dir, units_dir)
    summary["baselines"] = timed(f"{prefix}baselines", baselines, cfg, storage, shapes_dir, units_dir)
    return summary


def train_stage(cfg: Config, storage: Storage, fault_hook: Any = None) -> dict[str, Any]:
    """The run's students from its knowledge (``fault_hook``: tests only, ``cluster.training.train_ray``),
    then ``train.relabel_rounds`` self-training rounds (``cluster.passes.relabel``), each from the
    relabel pass of the one before; → the last round's summary with its ``relabel`` pass,
    the earlier rounds under ``relabel_rounds``."""
    check_pretrained(cfg, storage)
    shapes_dir, units_dir = distill_tables(cfg)
    if use_ray(cfg):
        from cluster.training.train_ray import train_on_ray

        join_ray(cfg)

        def train(c: Config, units: str) -> dict[str, Any]:
            return train_on_ray(c, storage, shapes_dir, units, fault_hook)
    else:
        from cluster.training.train import train_local

        def train(c: Config, units: str) -> dict[str, Any]:
            return train_local(c, storage, shapes_dir, units)

    if cfg.train.relabel_rounds == 0:
        return train(cfg, units_dir)
    from cluster.passes.evaluate import plan_items
    from cluster.passes.relabel import relabel, relabel_dir, round_config, round_folds

    rounds: list[dict[str, Any]] = []
    for r in range(cfg.train.relabel_rounds + 1):
        step: dict[str, Any] = {"round": r}
        if r > 0:
            items = plan_items(storage, shapes_dir, units_dir)
            step["relabel"] = timed(f"relabel_{r}", relabel, cfg, storage, items, shapes_dir, units_dir, r)
        knowledge = relabel_dir(cfg.run, r) if r else units_dir
        fits = [timed(f"train_{r}", train, round_config(cfg, r, f), knowledge) for f in round_folds(cfg, r)]
        step["train"] = (
            fits[0] if len(fits) == 1 else {"folds": fits, "students": [s for t in fits for s in t["students"]]}
        )
        rounds.append(step)
    last = rounds.pop()
    return {**last["train"], "relabel": last["relabel"], "relabel_rounds": rounds}


def evaluate_stage(cfg: Config, storage: Storage) -> dict[str, Any]:
    """Students and baselines on the evaluated shapes (extracting their knowledge first)."""
    from cluster.passes.evaluate import evaluate_run
    from cluster.training.students import require_students

    require_students(storage, cfg.run)  # before extracting the evaluated shapes' knowledge
    summary: dict[str, Any] = {}
    if cfg.mode == "pre":
        summary["eval_extract"] = extract_stage(cfg, storage, evaluated=True)
    shapes_dir, units_dir = evaluated_tables(cfg)
    return {**evaluate_run(cfg, storage, shapes_dir, units_dir), **summary}


def pretrain(cfg: Config, storage: Storage) -> dict[str, Any]:
    """The whole pipeline; the summary keeps the headline numbers at the top."""
    check_pretrained(cfg, storage)  # a bad encoder file fails before the teacher's pass
    extracted = extract_stage(cfg, storage)
    trained = timed("train", train_stage, cfg, storage)
    evaluated = timed("evaluate", evaluate_stage, cfg, storage) if cfg.eval.enabled else {}
    from cluster.passes.evaluate import METHODS

    head = {k: evaluated[k] for k in (*METHODS, "best_teacher", "lead_best") if k in evaluated}
    if head:
        print("\n" + evaluated["table"] + "\n", flush=True)
    return {
        "mode": cfg.mode,
        **head,
        "evaluated_shapes": evaluated.get("evaluated_shapes", 0),
        "per_category": evaluated.get("per_category", {}),
        "extract": extracted,
        "train": trained,
        "evaluate_seconds": evaluated.get("seconds", 0.0),
    }


def pretrain_encoder(cfg: Config, storage: Storage, fault_hook: Any = None) -> dict[str, Any]:
    """``jobs/pretrain_encoder.py``: ``data``'s shapes (ingested when needed), no labels →
    ``{run}/encoder/encoder.pt`` (``cluster.training.encoder``; on Ray Train, ``cluster.training.encoder_ray``).
    The summary's last field is the file's URI. fault_hook: tests only (``cluster.training.encoder_ray``)."""
    from cluster.training.checkpoints import load_torch
    from cluster.training.encoder import encoder_file, plan_encoder, pretrain_local

    shapes_dir, _ = distill_tables(cfg)
    ingested = timed("ingest", ensure_shapes, cfg, storage, cfg.data, shapes_dir)
    plan = plan_encoder(storage, shapes_dir)
    out = encoder_file(cfg.run)
    summary: dict[str, Any] = {"ingest": ingested, "shapes": plan.shapes}
    if storage.exists(out):
        log.info("encoder %s: %s is done; skipped (delete it to train again)", cfg.run, storage.uri(out))
        bundle = load_torch(storage, out)
        return {**summary, "skipped": True, "epochs": bundle.get("epochs"), "encoder": storage.uri(out)}
    start = time.perf_counter()
    if use_ray(cfg):
        from cluster.training.encoder_ray import pretrain_on_ray

        join_ray(cfg)
        history = pretrain_on_ray(cfg, storage, plan, fault_hook)
        backend = "ray"
    else:
        history = pretrain_local(cfg, storage, plan)
        backend = "local"
    bundle = load_torch(storage, out)
    return {
        **summary,
        "backend": backend,
        "epochs": bundle["epochs"],
        "first_loss": round(float(bundle["first_loss"]), 6) if bundle["first_loss"] is not None else None,
        "last_loss": round(float(history[-1]["loss"]), 6) if history else None,
        "train_seconds": round(time.perf_counter() - start, 1),
        "encoder": storage.uri(out),  # last: the line users copy into student.pretrained
    }
