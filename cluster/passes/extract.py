"""The extraction stage: shape table → render → teacher → back-projection → knowledge table.

Work is planned per *shape part* from the tables' manifests (``cluster.store.layout``): the
driver lists the unfinished shape parts and hands them out; whoever extracts a part
writes its knowledge, co-partitioned with it (``cluster.passes.extract_parts``), and returns one
small row per knowledge piece. The driver never reads a row of either table.

``extract`` streams the parts through ``cluster.passes.runner`` (in this process, or on Ray
Data) in one of two layouts (``cluster.extract_layout``; ``auto`` fuses when the teacher
has no GPU):

*fused* — one actor stage (``ExtractStage``, a pool that grows to every CPU) reads,
renders, teaches and back-projects each part's shapes where it is and writes its
knowledge: on CPU-only machines nothing is gained by splitting, and the views (9 MB a
shape at 320², 58 MB at 800²) never cross the object store.

*split* — render in CPU tasks (``render_part``: a part's unfinished shapes, one output
row a shape, ``cluster.render_cpus`` each), teach and back-project in a fixed pool of
``cluster.teacher_actors`` actors (``TeachStage``, ``cluster.teacher_gpus`` each), which
write each batch's units as knowledge pieces of the parts they came from. This is the GPU
cluster's layout: rendering spreads over CPU nodes, GPUs only teach.

The stages are in ``cluster.passes.extract_stages``.

Both skip what is done (a part whose pieces finish all its shapes; within a part, the
shapes its pieces list), and send a shape whose render or teacher raises to
``{run}/rejects/`` (stage ``extract``) with its reason, marked done, while the rest go on.
The knowledge of a shape depends only on the config, the seed and the shape: Ray and
this process give identical units. A teacher actor that dies (a crash, an OOM kill, a lost
node) is restarted by Ray and its batch retried (``cluster.passes.runner``); a batch that keeps
killing its actor fails the run, which a re-run resumes.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.config import Config
from cluster.passes.extract_parts import TeacherFactory
from cluster.passes.extract_stages import ExtractStage, TeachStage, render_part
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import (
    RENDER_BATCH_SHAPES,
    Pool,
    extract_fused,
    fused_pool,
    render_resources,
    teacher_actor_options,
)
from cluster.store.layout import shapes_manifest, unfinished_parts
from cluster.store.storage import Storage

log = logging.getLogger(__name__)


def plan(storage: Storage, shapes_dir: str, knowledge_dir: str) -> tuple[list[str], int]:
    """(the unfinished shape parts, the table's shapes) from the manifests."""
    shapes = shapes_manifest(storage, shapes_dir)
    todo = unfinished_parts(shapes, storage.manifest(knowledge_dir))
    return todo, sum(int(s.get("shapes", 0)) for s in shapes.values())


def summarise(
    rows: list[dict[str, Any]], total: int, seconds: float, storage: Storage, knowledge_dir: str
) -> dict[str, Any]:
    """An extraction's summary: {new, rejected, units, skipped, parts, shapes_per_s, table}
    from the rows of the knowledge pieces written."""
    storage.manifest(knowledge_dir)  # records the new pieces: the next planner reads one file
    new = sum(int(r["new"]) for r in rows)
    rejected = sum(int(r["rejected"]) for r in rows)
    skipped = max(0, total - new - rejected)  # done before (shapes of the table without a row of a part)
    return {
        "new": new,
        "rejected": rejected,
        "units": sum(int(r["units"]) for r in rows),
        "skipped": skipped,
        "parts": len(rows),
        "shapes_per_s": round((new + rejected) / seconds, 3) if seconds > 0 and new + rejected else 0.0,
        "table": storage.uri(knowledge_dir),
    }


def extract_pass(
    cfg: Config, storage: Storage, shapes_dir: str, knowledge_dir: str, teacher_factory: TeacherFactory | None = None
) -> Pass:
    """The extraction pass over ``{"part": shape part}`` items, fused or split
    (``cluster.runtime.resources.extract_fused``)."""
    teacher_kwargs = {"teacher_cfg": cfg.teacher, "seed": cfg.seed, "storage": storage, "run": cfg.run}
    teacher_kwargs |= {"knowledge_dir": knowledge_dir, "teacher_factory": teacher_factory}
    if extract_fused(cfg):
        kwargs = {**teacher_kwargs, "shapes_dir": shapes_dir, "render_cfg": cfg.render}
        return Pass("extract", (Step(ExtractStage, kwargs, fused_pool(cfg)),))
    render_kwargs = {"storage": storage, "shapes_dir": shapes_dir, "knowledge_dir": knowledge_dir}
    render = Pool(num_cpus=render_resources(cfg)["num_cpus"], batch_size=RENDER_BATCH_SHAPES, tasks=True)
    teacher = teacher_actor_options(cfg)
    return Pass(
        "extract",
        (
            Step(render_part, {**render_kwargs, "render_cfg": cfg.render}, render),
            Step(TeachStage, teacher_kwargs, teacher),
        ),
    )


def extract(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    teacher_factory: TeacherFactory | None = None,
) -> dict[str, Any]:
    """Teacher knowledge of the unfinished shape parts of ``shapes_dir`` into ``knowledge_dir``.

    Streams: a few parts' shapes are in flight per step, the workers write the knowledge,
    and the driver holds one summary row per knowledge piece → {new, skipped, rejected,
    units, parts, shapes_per_s, table}: ``new`` shapes got knowledge, ``rejected`` went to
    rejects, ``skipped`` were done before, ``parts`` is the number of pieces written.
    """
    todo, total = plan(storage, shapes_dir, knowledge_dir)
    p = extract_pass(cfg, storage, shapes_dir, knowledge_dir, teacher_factory)
    result = run_pass(cfg, p, ({"part": part} for part in todo))
    summary = summarise(result.rows, total, result.seconds, storage, knowledge_dir)
    log.info("extract: %s", summary)
    return summary
