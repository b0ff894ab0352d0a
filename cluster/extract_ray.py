"""The extraction stage: shape table → render → teacher → back-projection → knowledge table.

Work is planned per *shape part* from the tables' manifests (``cluster.layout``): the
driver lists the unfinished shape parts and hands them out; whoever extracts a part
writes its knowledge, co-partitioned with it (``cluster.extract_parts``), and returns one
small row per knowledge piece. The driver never reads a row of either table.

``extract_on_ray`` streams the parts through Ray Data in one of two layouts
(``cluster.extract_layout``; ``auto`` fuses when the teacher has no GPU):

*fused* — one actor stage (``ExtractStage``, a pool that grows to every CPU) reads,
renders, teaches and back-projects each part's shapes where it is and writes its
knowledge: on CPU-only machines nothing is gained by splitting, and the views (9 MB a
shape at 320², 58 MB at 800²) never cross the object store.

*split* — render in CPU tasks (``render_part``: a part's unfinished shapes, one output
row a shape, ``cluster.render_cpus`` each), teach and back-project in a fixed pool of
``cluster.teacher_actors`` actors (``TeachStage``, ``cluster.teacher_gpus`` each), which
write each batch's units as knowledge pieces of the parts they came from. This is the GPU
cluster's layout: rendering spreads over CPU nodes, GPUs only teach.

The stages are in ``cluster.extract_stages``; the plan and ``extract_local``, which runs
``PartExtractor`` over the parts in this process, in ``cluster.extract``.

Both skip what is done (a part whose pieces finish all its shapes; within a part, the
shapes its pieces list), and send a shape whose render or teacher raises to
``{run}/rejects/`` (stage ``extract``) with its reason, marked done, while the rest go on.
The knowledge of a shape depends only on the config, the seed and the shape: both
drivers give identical units. A teacher actor that dies (a crash, an OOM kill, a lost
node) is restarted by Ray and its batch retried (``cluster.actors``); a batch that keeps
killing its actor fails the run, which a re-run resumes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cluster.actors import actor_fault_options, map_batches
from cluster.config import Config
from cluster.extract import plan, summarise
from cluster.extract_parts import TeacherFactory
from cluster.extract_stages import ExtractStage, TeachStage, render_part
from cluster.runtime import (
    RENDER_BATCH_SHAPES,
    configure_data_context,
    extract_fused,
    fused_actor_options,
    render_resources,
    teacher_actor_options,
)
from cluster.storage import Storage

log = logging.getLogger(__name__)


# -- the Ray driver ------------------------------------------------------------------------
def build_dataset(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    parts: list[str],
    teacher_factory: TeacherFactory | None = None,
) -> Any:
    """The lazy Ray Dataset of ``PIECE_SCHEMA`` rows that extracting ``parts`` writes.

    The input is the list of unfinished shape parts, one a block: each task or actor call
    reads its part itself, so nothing of the tables passes through the driver.
    """
    import ray
    import ray.data

    ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=max(1, len(parts)))
    teacher_kwargs = {"teacher_cfg": cfg.teacher, "seed": cfg.seed, "storage": storage, "run": cfg.run}
    teacher_kwargs |= {"knowledge_dir": knowledge_dir, "teacher_factory": teacher_factory}
    if extract_fused(cfg):
        opts = fused_actor_options(cfg, ray.cluster_resources().get("CPU", 1.0))
        return map_batches(
            ds,
            ExtractStage,
            fn_constructor_kwargs={**teacher_kwargs, "shapes_dir": shapes_dir, "render_cfg": cfg.render},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(
                min_size=min(opts.min_size, len(parts)), max_size=min(opts.max_size, len(parts))
            ),
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus,
            **actor_fault_options(),
        )
    ds = ds.map_batches(
        render_part,
        fn_kwargs={
            "storage": storage,
            "shapes_dir": shapes_dir,
            "knowledge_dir": knowledge_dir,
            "render_cfg": cfg.render,
        },
        batch_size=1,
        batch_format="numpy",
        **render_resources(cfg),
    )
    teacher = teacher_actor_options(cfg)
    return map_batches(
        ds,
        TeachStage,
        fn_constructor_kwargs=teacher_kwargs,
        batch_size=max(RENDER_BATCH_SHAPES, teacher.batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=teacher.size),
        **teacher.remote_args(),
        **actor_fault_options(),
    )


def extract_on_ray(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    teacher_factory: TeacherFactory | None = None,
) -> dict[str, Any]:
    """Extraction on the connected Ray cluster (``cluster.runtime.connect`` first).

    Streams: a few parts' shapes are in flight per stage, the workers write the
    knowledge, and the driver holds one summary row per knowledge piece. Same return
    value as ``extract_local``.
    """
    todo, total = plan(storage, shapes_dir, knowledge_dir)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo:
        configure_data_context(cfg.progress)
        ds = build_dataset(cfg, storage, shapes_dir, knowledge_dir, todo, teacher_factory)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += batch.to_pylist()
            log.info("extract: %d knowledge pieces written", len(rows))
    summary = summarise(rows, total, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (ray): %s", summary)
    return summary
