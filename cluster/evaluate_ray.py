"""The evaluation stage on Ray: the shape parts through a Ray Data actor pool.

Each actor (``EvaluateStage``) loads the run's students once and evaluates one shape part
a call with ``cluster.evaluate.PartEvaluator``, writing its predictions; only per-category
sums of shape mIoU come back to the driver (``distill.records.SUMS_SCHEMA`` rows). The plan,
the shared pieces and the local driver are in ``cluster.evaluate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from cluster.actors import student_item_pool
from cluster.config import Config, config_from_dict, to_dict
from cluster.evaluate import PartEvaluator, PartSums, UnitsPrior, empty_sums, load_students, pooled
from cluster.layout import PartItem
from cluster.runtime import join_ray
from cluster.samples import Tables
from cluster.storage import Storage
from distill.records import add_sums, sums_to_table


class EvaluateStage:
    """Ray Data callable class: the run's students loaded once per actor; per item, its
    ``PartEvaluator`` sums as ``distill.records.SUMS_SCHEMA`` rows."""

    def __init__(self, config: dict[str, Any], tables: Tables, with_students: bool, predictions_dir: str) -> None:
        cfg = config_from_dict(config)
        storage = Storage.from_config(cfg.storage)
        students = load_students(storage, cfg.run) if with_students else []
        self.evaluate = PartEvaluator(
            storage, tables, students, predictions_dir, cfg.train.batch_size, UnitsPrior.from_config(cfg), pooled(cfg)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = []
        for i in range(len(batch["shape_part"])):
            out.append(sums_to_table(*self.evaluate(PartItem.from_row({k: batch[k][i] for k in batch}))))
        return pa.concat_tables(out)


def evaluate_on_ray(
    cfg: Config, storage: Storage, items: list[PartItem], tables: Tables, with_students: bool, predictions_dir: str
) -> PartSums:
    """Every item through an actor pool of ``cluster.eval_actors`` actors (0: one per two
    CPUs of the cluster), joining Ray first (an ``EvaluateDriver``; no items: no Ray)."""
    total = empty_sums()
    categories: set[str] = set()
    if not items:
        return total, categories
    join_ray(cfg)
    kwargs = {
        "config": to_dict(cfg),
        "tables": tables,
        "with_students": with_students,
        "predictions_dir": predictions_dir,
    }
    ds = student_item_pool(cfg, items, EvaluateStage, kwargs)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        add_sums(batch.to_pylist(), total, categories)
    return total, categories
