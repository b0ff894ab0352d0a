"""One way to run a pass over work items: in this process, or on Ray Data.

A *pass* (``Pass``) is a chain of steps over work items, small rows of plain values (a
shape part and its knowledge parts, a batch of files to ingest). Each step is a Ray Data
batch callable, ``batch (dict of numpy arrays) → rows`` (a ``pyarrow.Table``, a dict of
arrays, or a generator of either): a class is built once per actor and holds its models,
a function runs as CPU tasks. Workers write their results to storage themselves; the driver
gets only small rows back (counts, sums, names).

``run_pass(cfg, pass, items)`` runs the chain

* here (``cluster.backend`` local): the same callables over the same batches, lazily
  chained, so a step holds one batch at a time, under one progress bar; or
* on Ray: one Ray Data dataset, a block per first-step batch, each actor step a pool
  (``Pool``) whose dead actors are restarted and their batch retried
  (``ACTOR_MAX_RESTARTS``, ``ACTOR_MAX_TASK_RETRIES``).

Both skip the items the pass's ``finished`` says are done (a re-run resumes), and on the
same items write the same tables: the contract ``tests/cluster/test_passes.py`` checks
for every pass. This module is the only one that sets pool sizes and fault tolerance;
``cluster.runtime.connect.use_ray`` is the only place that decides "Ray or here".
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from cluster.config import Config
from cluster.runtime.connect import join_ray, use_ray
from cluster.runtime.resources import Pool

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = -1
"""A dead actor (a crash, an OOM kill, a lost node) is always replaced; each replacement
reloads its models."""
ACTOR_MAX_TASK_RETRIES = 3
"""Attempts of one batch on replaced actors before the run fails: a batch that kills every
actor it meets is a poison pill, not bad luck."""


@dataclass(frozen=True)
class Step:
    """One step of a pass: ``fn`` (a class: built as ``fn(**kwargs)`` once per actor; a
    function: called as ``fn(batch, **kwargs)``) and how it runs (``pool``)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    pool: Pool = Pool()

    def build(self) -> Callable[[dict[str, np.ndarray]], Any]:
        if isinstance(self.fn, type):
            return self.fn(**self.kwargs)
        return lambda batch: self.fn(batch, **self.kwargs)


@dataclass(frozen=True)
class Pass:
    """A pass over work items: ``name`` (logs, progress), its ``steps``, and
    ``finished(item)``, the driver's test of an item done before (None: none is)."""

    name: str
    steps: tuple[Step, ...]
    finished: Callable[[dict[str, Any]], bool] | None = None
    unit: str = "part"
    """What an item is, for the progress bar."""
    window: int = 0
    """Items per Ray Data execution (0: all at once): a stream of many items (ingest's file
    batches) is handed out a window at a time, so the driver holds a bounded number."""


@dataclass
class PassResult:
    """What a pass gives the driver: the last step's rows, items run and skipped, seconds."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    items: int = 0
    skipped: int = 0
    seconds: float = 0.0


FAULT_HOOK: Callable[[], None] | None = None
"""Tests only (``tests/cluster/test_passes.py``): called on Ray before each batch of every
step, in the actor or task that runs it, where it may kill the process."""


def run_pass(cfg: Config, p: Pass, items: Iterable[dict[str, Any]]) -> PassResult:
    """Run ``p`` over the ``items`` not finished, on Ray or here as ``cluster.backend`` says."""
    start = time.perf_counter()
    result = PassResult()

    def todo() -> Iterator[dict[str, Any]]:
        for item in items:
            if p.finished is not None and p.finished(item):
                result.skipped += 1
                continue
            result.items += 1
            yield item

    ray = use_ray(cfg)
    result.rows = (_run_on_ray if ray else _run_here)(cfg, p, todo())
    result.seconds = time.perf_counter() - start
    where = "ray" if ray else "local"
    log.info("%s (%s): %d items run, %d skipped, %.1f s", p.name, where, result.items, result.skipped, result.seconds)
    return result


# -- in this process -----------------------------------------------------------------------
def _run_here(cfg: Config, p: Pass, items: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: Iterator[dict[str, Any]] = iter(tqdm(items, desc=p.name, unit=p.unit, disable=not cfg.progress))
    first = next(rows, None)
    if first is None:
        return []
    rows = itertools.chain([first], rows)
    for step in p.steps:  # built once the first item is known: no models are loaded for nothing
        rows = _step_here(step.build(), step.pool.batch_size, rows)
    return list(rows)


def _step_here(fn: Callable[[dict[str, np.ndarray]], Any], size: int, rows: Iterator[dict[str, Any]]) -> Any:
    while chunk := list(itertools.islice(rows, size)):
        yield from output_rows(fn(rows_to_batch(chunk)))


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows → a numpy batch as Ray Data hands one to ``map_batches``: a column a key;
    arrays of one shape stacked, else an object array of arrays; strings as objects."""
    batch = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        if isinstance(values[0], np.ndarray):
            if all(v.shape == values[0].shape for v in values):
                batch[k] = np.stack(values)
                continue
        elif not isinstance(values[0], (str, bytes)) and values[0] is not None:
            batch[k] = np.asarray(values)
            continue
        col = np.empty(len(values), dtype=object)
        col[:] = values
        batch[k] = col
    return batch


def output_rows(out: Any) -> Iterator[dict[str, Any]]:
    """A step's output (a table, a dict of arrays, or a generator of them) as rows."""
    if isinstance(out, pa.Table):
        yield from out.to_pylist()
    elif isinstance(out, dict):
        n = len(next(iter(out.values()), []))
        yield from ({k: v[i] for k, v in out.items()} for i in range(n))
    else:
        for each in out:
            yield from output_rows(each)


# -- on Ray ----------------------------------------------------------------------------------
class _Hooked:
    """An actor step with ``FAULT_HOOK`` before each batch (tests only)."""

    def __init__(self, step: Step, hook: Callable[[], None]) -> None:
        self.fn, self.hook = step.build(), hook

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        self.hook()
        return self.fn(batch)


def _hooked_task(batch: dict[str, np.ndarray], step: Step, hook: Callable[[], None]) -> Any:
    """A task step with ``FAULT_HOOK`` before each batch (tests only)."""
    hook()
    return step.fn(batch, **step.kwargs)


def _run_on_ray(cfg: Config, p: Pass, items: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    join_ray(cfg)
    rows: list[dict[str, Any]] = []
    while window := list(itertools.islice(items, p.window or None)):
        ds = ray_dataset(p, window, FAULT_HOOK)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):  # Ray Data draws the bars
            rows += batch.to_pylist()
    return rows


def ray_dataset(p: Pass, items: list[dict[str, Any]], fault_hook: Callable[[], None] | None = None) -> Any:
    """The lazy Ray Dataset of ``p`` over ``items``: a block per first-step batch, each step
    mapped (Ray must be joined; ``.explain()`` shows the plan)."""
    import ray
    import ray.data

    cpus = ray.cluster_resources().get("CPU", 1.0)
    blocks = -(-len(items) // p.steps[0].pool.batch_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, blocks))
    for step in p.steps:
        ds = _map_step(ds, step, len(items), cpus, fault_hook)
    return ds


def pool_size(pool: Pool, items: int, cluster_cpus: float) -> dict[str, int]:
    """``ActorPoolStrategy`` arguments of an actor step over ``items`` items on a cluster of
    ``cluster_cpus`` CPUs: ``pool.size`` actors (0: one per two CPUs), or with ``pool.grow``
    from ``pool.size`` up to what the CPUs hold; never more actors than items."""
    size = pool.size or max(1, int(cluster_cpus // 2))
    if pool.grow:
        most = max(1, int(cluster_cpus // max(pool.num_cpus, 1.0)))
        return {"min_size": max(1, min(size, most, items)), "max_size": max(1, min(max(size, most), items))}
    return {"size": max(1, min(size, items))}


def _map_step(ds: Any, step: Step, items: int, cluster_cpus: float, fault_hook: Callable[[], None] | None) -> Any:
    """``ds`` mapped by one step: tasks, or an actor pool with fault tolerance."""
    import ray.data

    pool = step.pool
    common = {"batch_size": pool.batch_size, "batch_format": "numpy", **pool.remote_args()}
    if pool.tasks:
        if fault_hook is not None:
            return ds.map_batches(functools.partial(_hooked_task, step=step, hook=fault_hook), **common)
        return ds.map_batches(step.fn, fn_kwargs=step.kwargs, **common)
    fn, kwargs = step.fn, step.kwargs
    if fault_hook is not None:
        fn, kwargs = _Hooked, {"step": step, "hook": fault_hook}
    # Ray 2.60 has no named argument for actor fault tolerance yet, and warns on extra
    # remote args. Setting them also keeps Ray Data from fusing a task step into the pool
    # that follows (it fuses where remote args match), which would run the tasks' work on
    # the pool's few actors instead of every CPU.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            fn,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(**pool_size(pool, items, cluster_cpus)),
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=ACTOR_MAX_TASK_RETRIES,
            **common,
        )
