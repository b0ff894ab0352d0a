"""Backward distillation at scale: the re-scoring pass (``cluster.rescore``) as Ray Data
batch inference.

Work items are the student's shape parts (with their knowledge parts); a fixed pool of
``cluster.rescore_actors`` actors (``cluster.rescore_gpus`` each) loads the pending
snapshot once and re-scores one item a call with ``ItemRescorer``, writing the round's
score parts itself. A retried call rewrites the same parts with the same content, and a
re-run skips parts already written. The driver sees one summary row per item, then moves
``last.pt`` on to the new round.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.actors import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES
from cluster.checkpoints import load_torch
from cluster.config import Config, config_from_dict, to_dict
from cluster.rescore import ItemRescorer, finish_round, summarise, todo_items
from cluster.runtime import configure_data_context, rescore_actor_options
from cluster.storage import Storage
from distill.records import RESCORE_RESULT_SCHEMA

log = logging.getLogger(__name__)


class RescoreStage:
    """Ray Data callable class: the student snapshot, loaded once per actor; per item, its
    units re-scored and the round's score parts written."""

    def __init__(self, config: dict[str, Any], plan: dict[str, Any], checkpoint: str, round: int) -> None:
        import torch

        from cluster.train import StudentPlan

        cfg = config_from_dict(config)
        self.plan = StudentPlan.from_dict(plan)
        use_gpu = cfg.cluster.rescore_gpus > 0 and torch.cuda.is_available()
        device = torch.device("cuda" if use_gpu else "cpu")
        out_dir = self.plan.tables(round).scores_dir
        storage = Storage.from_config(cfg.storage)
        self.rescore = ItemRescorer(
            cfg, storage, self.plan.tables(round - 1, pooled=False), self.plan.space, checkpoint, out_dir, device
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from cluster.layout import PartItem

        rows = []
        for i in range(len(batch["shape_part"])):
            item = PartItem.from_row({k: batch[k][i] for k in batch})
            rows.append(self.rescore(item))
        return pa.Table.from_pylist(rows, schema=RESCORE_RESULT_SCHEMA)


def rescore_on_ray(cfg: Config, storage: Storage, plan: Any, checkpoint: str) -> dict[str, Any]:
    """Write the score parts that a student's (``StudentPlan``) round lacks, re-scoring
    with ``checkpoint`` (a ``last.pt`` saved awaiting its re-scoring).

    → {round, parts, skipped_parts, shapes, units, mean_score, seconds}.
    """
    import ray.data

    start = time.perf_counter()
    state = load_torch(storage, checkpoint)
    if not state.get("pending_rescore"):
        raise ValueError(f"{storage.uri(checkpoint)} is not waiting for a re-scoring")
    new_round = int(state["round"]) + 1
    del state  # the driver keeps no model weights around during the pass
    todo = todo_items(storage, plan.items, plan.tables(new_round).scores_dir)
    done: list[dict[str, Any]] = []
    if todo:
        configure_data_context(cfg.progress)
        opts = rescore_actor_options(cfg)
        ds = ray.data.from_items([i.to_row() for i in todo], override_num_blocks=len(todo))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                RescoreStage,
                fn_constructor_kwargs={
                    "config": to_dict(cfg),
                    "plan": plan.to_dict(),
                    "checkpoint": checkpoint,
                    "round": new_round,
                },
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(opts.size, len(todo))),
                max_restarts=ACTOR_MAX_RESTARTS,
                max_task_retries=ACTOR_MAX_TASK_RETRIES,
                **opts.remote_args(),
            )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            done += batch.to_pylist()
    missing = todo_items(storage, plan.items, plan.tables(new_round).scores_dir)
    if missing:
        raise RuntimeError(
            f"re-scoring of {plan.name} left {len(missing)} parts without scores: {[i.shape_part for i in missing[:5]]}"
        )
    finish_round(cfg, storage, plan.tables(new_round).scores_dir)
    summary = summarise(new_round, done, len(plan.items) - len(todo), time.perf_counter() - start)
    log.info("student %s: backward distillation round %d re-scored on Ray: %s", plan.name, new_round, summary)
    return summary
