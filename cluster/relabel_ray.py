"""The relabel pass on Ray: the items through a Ray Data actor pool.

Each actor (``RelabelStage``) loads the previous generation's students once and relabels
one item a call with ``cluster.relabel.Relabeller``, writing its knowledge parts; only
counts come back to the driver. The plan and the local driver are in ``cluster.relabel``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.actors import student_item_pool
from cluster.config import Config, config_from_dict, to_dict
from cluster.layout import PartItem
from cluster.relabel import relabeller
from cluster.runtime import join_ray
from cluster.storage import Storage


class RelabelStage:
    """Ray Data callable class: one ``Relabeller`` per actor; per item, the counts written."""

    def __init__(self, config: dict[str, Any], shapes_dir: str, units_dir: str, generation: int) -> None:
        cfg = config_from_dict(config)
        self.relabel = relabeller(cfg, Storage.from_config(cfg.storage), shapes_dir, units_dir, generation)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = [
            self.relabel(PartItem.from_row({k: batch[k][i] for k in batch})) for i in range(len(batch["shape_part"]))
        ]
        return {k: np.array([c[k] for c in counts], np.int64) for k in ("parts", "shapes", "in_sample")}


def relabel_on_ray(
    cfg: Config, storage: Storage, todo: list[PartItem], shapes_dir: str, units_dir: str, generation: int
) -> dict[str, int]:
    """Every item through an actor pool of ``cluster.eval_actors`` actors (0: one per two
    CPUs of the cluster), joining Ray first (a ``RelabelDriver``; no items: no Ray)."""
    total = {"parts": 0, "shapes": 0, "in_sample": 0}
    if not todo:
        return total
    join_ray(cfg)
    kwargs = {"config": to_dict(cfg), "shapes_dir": shapes_dir, "units_dir": units_dir, "generation": generation}
    ds = student_item_pool(cfg, todo, RelabelStage, kwargs)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for k in total:
            total[k] += int(batch[k].sum())
    return total
