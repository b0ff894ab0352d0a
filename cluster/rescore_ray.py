"""Backward distillation at scale: re-scoring a student's knowledge as a Ray Data pass.

On Ray, a student trains (Ray Train) until its re-scoring is due, saves ``last.pt``
awaiting it (``distill.training.distil(rescore_externally=True)``) and stops. Then this
module re-scores every knowledge unit of the student's shapes with that snapshot, as
batch inference on a fixed pool of actors (``cluster.rescore_actors``, with
``cluster.rescore_gpus`` each), writes the result as ``{run}/knowledge/round_{k}/`` and
puts the new scores into ``last.pt`` (``apply_rescore``), from which training resumes.

Work items are the parts of the teacher's knowledge table (``round_0``, ≤ 32 shapes each):
each actor call reads one part and its shapes' rows, prepares the samples exactly as
training does (same resampling, same seed), predicts with the student and re-scores with
``distill.training.rescore_samples``, so the scores equal the in-loop ones. The actor
writes the re-scored units as one part named after the student and the source part:
a retried call rewrites the same part with the same content, and a re-run skips parts
already written. The driver only sees one summary row per part.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.checkpoints import load_torch, save_torch
from cluster.extract_ray import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES, load_rows
from cluster.runtime import configure_data_context, rescore_actor_options
from cluster.storage import Storage
from distill.config import Config, config_from_dict, to_dict
from distill.records import row_to_shape, table_to_units, units_to_table
from distill.training import LabelSpace, apply_rescore, prepare_samples

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([("part", pa.string()), ("shapes", pa.int64()), ("units", pa.int64())])


def round_part_name(student: str, source_part: str) -> str:
    """The re-scored part of ``student`` made from knowledge part ``source_part``."""
    stem = source_part.removesuffix(".parquet").removeprefix("part-")
    return f"part-{student}-{stem}.parquet"


def plan_items(
    storage: Storage,
    shapes_dir: str,
    units_dir: str,
    out_dir: str,
    student: str,
    shape_ids: set[str],
) -> tuple[list[dict[str, str]], list[str]]:
    """The knowledge parts still to re-score for a student, as Ray Data items.

    → (items ``{"units_part", "out_part", "refs"}`` — refs: JSON ``[[shape part, shape
    id], ...]`` of the student's shapes in that part — , the out parts already written).
    """
    where = {sid: part for part, ids in storage.part_column(shapes_dir, "shape_id").items() for sid in ids}
    written = set(storage.part_names(out_dir))
    items, done = [], []
    for part, ids in storage.part_done_ids(units_dir).items():
        mine = sorted(sid for sid in set(ids) if sid in shape_ids)
        if not mine:
            continue
        out = round_part_name(student, part)
        if out in written:
            done.append(out)
            continue
        missing = [sid for sid in mine if sid not in where]
        if missing:
            raise ValueError(
                f"{storage.uri(units_dir, part)}: shapes {missing[:5]} are not in {storage.uri(shapes_dir)}"
            )
        items.append({"units_part": part, "out_part": out, "refs": json.dumps([[where[s], s] for s in mine])})
    return items, done


class RescoreStage:
    """Ray Data callable class: the student snapshot, loaded once per actor; per knowledge
    part, its units re-scored and written to ``out_dir``."""

    def __init__(
        self,
        config: dict[str, Any],
        space: dict[str, Any],
        checkpoint: str,
        shapes_dir: str,
        units_dir: str,
        out_dir: str,
    ) -> None:
        import torch

        from distill.student import build_student

        self.cfg: Config = config_from_dict(config)
        self.storage = Storage.from_config(self.cfg.storage)
        self.space = LabelSpace.from_dict(space)
        self.shapes_dir, self.units_dir, self.out_dir = shapes_dir, units_dir, out_dir
        state = load_torch(self.storage, checkpoint)
        if not state.get("pending_rescore"):
            raise ValueError(f"{self.storage.uri(checkpoint)} is not waiting for a re-scoring")
        self.round = int(state["round"]) + 1
        self.scores: dict[str, np.ndarray] = state["scores"]
        use_gpu = self.cfg.cluster.rescore_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = build_student(self.cfg.student, self.space.num_slots, self.space.num_categories)
        self.model.load_state_dict(state["model"])  # BatchNorm re-calibrated before the save
        self.model.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from distill.training import rescore_samples

        rows = []
        for units_part, out_part, refs_json in zip(batch["units_part"], batch["out_part"], batch["refs"]):
            refs = [(str(p), str(s)) for p, s in json.loads(str(refs_json))]
            ids = {s for _, s in refs}
            table = self.storage.read_part(self.units_dir, str(units_part))
            units = {k: u for k, u in table_to_units(table).items() if k in ids}
            shapes = [row_to_shape(r) for r in load_rows(self.storage, self.shapes_dir, refs)]
            samples = prepare_samples(shapes, units, self.space, self.cfg.data.num_points, self.cfg.seed)
            samples = [s for s in samples if s.num_units]
            new = rescore_samples(self.model, samples, self.space, self.scores, self.device, self.cfg.train.batch_size)
            rescored = [units[s.shape_id].with_scores(new[s.shape_id], self.round) for s in samples]
            out = units_to_table(rescored)
            self.storage.write_part(self.out_dir, out, done_ids=sorted(ids), name=str(out_part))
            rows.append({"part": str(out_part), "shapes": len(ids), "units": out.num_rows})
        return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def read_round_scores(storage: Storage, out_dir: str, student: str) -> dict[str, np.ndarray]:
    """The re-scored units' scores by shape id from a student's parts of ``out_dir``."""
    prefix = f"part-{student}-"
    scores: dict[str, np.ndarray] = {}
    for name in storage.part_names(out_dir):
        if name.startswith(prefix):
            for sid, u in table_to_units(storage.read_part(out_dir, name)).items():
                scores[sid] = u.score
    return scores


def rescore_on_ray(
    cfg: Config,
    storage: Storage,
    student: str,
    space: LabelSpace,
    shapes_dir: str,
    units_dir: str,
    checkpoint: str,
    out_dir: str,
) -> dict[str, Any]:
    """Re-score a student's knowledge from its pending ``checkpoint`` and resume it.

    Runs the pass for the parts not yet written to ``out_dir``, then writes the new
    scores into ``checkpoint`` (no longer pending). → {round, parts, skipped_parts,
    shapes, units, mean_score, seconds}.
    """
    import ray.data

    start = time.perf_counter()
    state = load_torch(storage, checkpoint)
    if not state.get("pending_rescore"):
        raise ValueError(f"{storage.uri(checkpoint)} is not waiting for a re-scoring")
    items, skipped = plan_items(storage, shapes_dir, units_dir, out_dir, student, set(state["scores"]))
    parts = units = 0
    if items:
        configure_data_context(cfg.progress)
        opts = rescore_actor_options(cfg)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                RescoreStage,
                fn_constructor_kwargs={
                    "config": to_dict(cfg),
                    "space": space.to_dict(),
                    "checkpoint": checkpoint,
                    "shapes_dir": shapes_dir,
                    "units_dir": units_dir,
                    "out_dir": out_dir,
                },
                batch_size=opts.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(opts.size, len(items))),
                max_restarts=ACTOR_MAX_RESTARTS,
                max_task_retries=ACTOR_MAX_TASK_RETRIES,
                **opts.remote_args(),
            )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts += batch.num_rows
            units += int(np.sum(batch.column("units").to_numpy()))
    new = read_round_scores(storage, out_dir, student)
    scores = {sid: new.get(sid, old) for sid, old in state["scores"].items()}
    missing = [sid for sid, old in state["scores"].items() if len(old) and sid not in new]
    if missing:
        raise RuntimeError(f"re-scoring of {student} left {len(missing)} shapes without scores: {missing[:5]}")
    save_torch(storage, checkpoint, apply_rescore(state, scores))
    flat = np.concatenate([s for s in new.values()]) if new else np.zeros(0)
    summary = {
        "round": int(state["round"]) + 1,
        "parts": parts,
        "skipped_parts": len(skipped),
        "shapes": len(new),
        "units": units,
        "mean_score": round(float(flat.mean()), 4) if flat.size else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("student %s: backward distillation round %d re-scored on Ray: %s", student, summary["round"], summary)
    return summary
