"""Ray Data actor pools as the stages run them: fault tolerance, and the one way to pass it.

A dead stage actor (a crash, an OOM kill, a lost node) is restarted by Ray and its batch
retried (``actor_fault_options``). Ray 2.60 (pinned) deprecates extra remote args such as
``max_restarts`` in favour of named ones, and has no named one for actor fault tolerance
yet: ``map_batches`` passes them with that warning silenced.
"""

from __future__ import annotations

import warnings
from typing import Any

ACTOR_MAX_RESTARTS = -1
"""A dead actor is always replaced (each replacement reloads its model)."""
ACTOR_MAX_TASK_RETRIES = 3
"""Attempts of one batch on replaced actors before the run fails: a batch that kills
every actor it meets is a poison pill, not bad luck."""


def actor_fault_options() -> dict[str, int]:
    """Ray remote args that restart a dead actor and retry its batch.

    Setting them explicitly also keeps Ray Data from fusing a task stage into the actors
    that follow it (it fuses a task stage into a following actor stage whose remote args
    match), which would run the tasks' work (e.g. rendering) on the pool's few actors
    instead of every CPU.
    """
    return {"max_restarts": ACTOR_MAX_RESTARTS, "max_task_retries": ACTOR_MAX_TASK_RETRIES}


def map_batches(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches(fn, **kwargs)`` without Ray's deprecation warning for extra remote args."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs)


def student_item_pool(cfg: Any, items: list[Any], stage: type, kwargs: dict[str, Any]) -> Any:
    """A Ray dataset of ``items`` (``PartItem``s, one a block) mapped by an actor pool of
    ``stage`` (built with ``kwargs``, one item a call): ``cluster.eval_actors`` actors, 0:
    one per two CPUs of the cluster. The passes that load the run's students once an
    actor (evaluation, relabelling) share it. Ray must be joined."""
    import ray
    import ray.data

    size = cfg.cluster.eval_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // 2))
    ds = ray.data.from_items([i.to_row() for i in items], override_num_blocks=len(items))
    return map_batches(
        ds,
        stage,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(size, len(items))),
        num_cpus=1,
    )
