"""The generation stage on Ray: (category, index) prompts → shapes → filters → shape table.

One plan, two drivers, one contract (docs/design.md §2):

plan (driver, pure; ``cluster.generate``)
    ``plan_rows``: one row per (category, index) for ``generation.categories`` ×
    ``generation.start .. start + count - 1`` with its shape id, prompt and seed; rows whose
    id is already done in the table (written or rejected) are dropped here, before any
    worker sees them, so a re-run only makes what is missing.
``generate_on_ray``
    The rows become a Ray Dataset with ``from_items(..., override_num_blocks=...)``: one
    block per part instead of ``from_items``' default of one block per row (a million
    one-row blocks would drown the scheduler), so no repartition pass is needed.
    The workers are in ``cluster.generate_stages``:
    * procedural: a plain CPU task per block (``procedural_batch``): make, filter, write.
    * shap_e: a fixed pool of ``generation.actors`` actors (``ShapEStage``; the pipeline is
      loaded once per actor in ``__init__``, ``generation.gpus`` GPUs each,
      ``generation.batch_size`` prompts per call) runs diffusion and the SDF lattice on the
      GPU; CPU tasks (``finish_shap_e_batch``) then run marching cubes, the filters and
      point sampling, and write — so the GPU never waits on CPU work.
    Each part is written by the task that finished its shapes, and only ids and reasons
    come back to the driver: shapes never funnel through one process, which is what lets
    a cluster write a million shapes. A task that Ray retries rewrites the same part name
    (a hash of its ids) with the same content, so retries never duplicate shapes.
``generate_local`` (``cluster.generate``)
    The same functions in this process, a tqdm bar, no Ray (laptops, small corpora).
``cluster.pipeline.generate_shapes`` picks the driver (``cluster.backend``).

Every asked shape ends in exactly one of: a row of a part (``new``) or a reject with its
reason in ``{run}/rejects/`` (stage ``generate``, ``rejected``); both are done ids of a
part, so ``new + rejected + skipped == asked``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from tqdm import tqdm

from cluster.actors import actor_fault_options, map_batches
from cluster.config import Config
from cluster.generate import (
    category_parts,
    default_table_dir,
    generator_actor_options,
    part_shapes,
    plan_rows,
    resolve_categories,
    summarise,
)
from cluster.generate_stages import ShapEStage, finish_shap_e_batch, procedural_batch
from cluster.storage import Storage

log = logging.getLogger(__name__)


# -- the Ray driver --------------------------------------------------------------------
def build_dataset(cfg: Config, storage: Storage, table_dir: str, rows: list[dict[str, Any]]) -> Any:
    """The lazy Ray Dataset of ``GENERATE_RESULT_SCHEMA`` rows (parts are written as it runs)."""
    import ray.data

    gen = cfg.generation
    per_part = part_shapes(len(rows))
    common = {"storage": storage, "run": cfg.run, "table_dir": table_dir}
    if gen.name == "procedural":
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_part))
        return ds.map_batches(
            procedural_batch,
            fn_kwargs={**common, "num_points": cfg.data.num_points, "check": gen.filter},
            batch_size=per_part,
            batch_format="numpy",
            num_cpus=1,
        )
    pool = generator_actor_options(cfg)
    # Blocks of one actor batch: the pool pulls work in batch-sized units.
    ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / pool.batch_size))
    ds = map_batches(
        ds,
        ShapEStage,
        fn_constructor_kwargs={"gen": gen},
        batch_size=pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        **actor_fault_options(),
    )
    parts = category_parts(cfg, resolve_categories(cfg))
    return ds.map_batches(
        finish_shap_e_batch,
        fn_kwargs={**common, "parts": parts, "gen": gen, "run_seed": cfg.seed, "num_points": cfg.data.num_points},
        batch_size=min(per_part, max(pool.batch_size, 1) * 4),
        batch_format="numpy",
        num_cpus=1,
    )


def generate_on_ray(cfg: Config, storage: Storage, table_dir: str | None = None) -> dict[str, Any]:
    """Generation on the connected Ray cluster (``cluster.runtime.connect`` first) → the
    summary (``cluster.generate.summarise``)."""
    from cluster.runtime import configure_data_context

    table_dir = table_dir or default_table_dir(cfg)
    rows, asked, skipped = plan_rows(cfg, storage.done_ids(table_dir))
    results: list[tuple[str, str]] = []
    parts: set[str] = set()
    start = time.perf_counter()
    if rows:
        configure_data_context(cfg.progress)
        ds = build_dataset(cfg, storage, table_dir, rows)
        pending = {r["shape_id"] for r in rows}
        with tqdm(
            total=len(rows), desc=f"generate {cfg.generation.name}", unit="shape", disable=not cfg.progress
        ) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for sid, err, part in zip(*(batch.column(k).to_pylist() for k in ("shape_id", "error", "part"))):
                    if sid not in pending:  # a retried task's second report of the same part
                        continue
                    pending.discard(sid)
                    results.append((sid, err))
                    parts.add(part)
                    bar.update(1)
        if pending:  # cannot happen unless rows were dropped; they stay undone for a re-run
            log.error("generate: %d shapes did not come back and stay undone: %s", len(pending), sorted(pending)[:10])
    summary = summarise(cfg, asked, skipped, results, parts, time.perf_counter() - start, storage, table_dir)
    log.info("generate (ray): %s", summary)
    return summary

