"""The generation stage: (category, index) prompts → shapes → filters → shape table.

One plan, one pass (docs/design.md §2):

plan (driver, pure)
    ``plan_rows``: one row per (category, index) for ``generation.categories`` ×
    ``generation.start .. start + count - 1`` with its shape id, prompt and seed; rows
    whose id is already done in the table (written or rejected) are dropped here, before
    any worker sees them, so a re-run only makes what is missing. ``part_shapes`` sizes
    the parts.
``generate``
    The rows go through ``cluster.passes.runner`` (in this process, or on Ray Data, a block per
    part). The steps are in ``cluster.passes.generate_stages``:
    * procedural: CPU tasks of one part each (``procedural_batch``): make, filter, write.
    * shap_e: a fixed pool of ``generation.actors`` actors (``ShapEStage``; the pipeline is
      loaded once per actor, ``generation.gpus`` GPUs each, ``generation.batch_size``
      prompts per call) runs diffusion and the SDF lattice on the GPU; CPU tasks
      (``finish_shap_e_batch``) then run marching cubes, the filters and point sampling,
      and write, so the GPU never waits on CPU work.
    Each part is written by the task that finished its shapes, and only ids and reasons
    come back to the driver. A task that Ray retries rewrites the same part name (a hash
    of its ids) with the same content, so retries never duplicate shapes.

Every asked shape ends in exactly one of: a row of a part (``new``) or a reject with its
reason in ``{run}/rejects/`` (stage ``generate``, ``rejected``); both are done ids of a
part, so ``new + rejected + skipped == asked``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from cluster.config import Config
from cluster.passes.generate_stages import ShapEStage, finish_shap_e_batch, procedural_batch
from cluster.passes.runner import Pass, Step, run_pass
from cluster.runtime.resources import Pool
from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from distill.categories import PSB_PARTS, SHAPENETPART_PARTS, canonical_name, part_names_for
from distill.config import ConfigError
from distill.sampling import derive_seed
from generation import procedural
from generation.filters import reason_kind
from generation.procedural import ALL_CATEGORIES as PROCEDURAL_ALL
from generation.procedural import CATEGORIES as PROCEDURAL_CATEGORIES
from generation.procedural import PROCEDURAL_PARTS
from generation.prompts import check_templates, make_prompt

log = logging.getLogger(__name__)

DEFAULT_COUNT = 24
"""Shapes per category when neither generation.count nor data.per_category is set."""
MAX_PART_SHAPES = 64
"""Most shapes per part (~6 MB of procedural shapes): a stopped run redoes at most this many."""
MIN_PARTS = 8
"""Small runs still write several parts, so several tasks share the work."""
ACTOR_CPUS = 1.0


def part_shapes(todo: int) -> int:
    """Shapes per part for a run of ``todo`` shapes: ≥ MIN_PARTS parts, ≤ MAX_PART_SHAPES each."""
    if todo < 0:
        raise ValueError(f"todo={todo} must be >= 0")
    return max(1, min(MAX_PART_SHAPES, math.ceil(todo / MIN_PARTS)))


def count_per_category(cfg: Config) -> int:
    """generation.count, else data.per_category, else ``DEFAULT_COUNT``."""
    return cfg.generation.count or cfg.data.per_category or DEFAULT_COUNT


def resolve_categories(cfg: Config) -> list[str]:
    """Canonical category names: generation.categories, else data.categories, else the
    procedural ones. Raises ``ConfigError`` naming the key for an unknown category."""
    gen = cfg.generation
    wanted = list(gen.categories or cfg.data.categories)
    if gen.name == "procedural":
        if not wanted:
            return list(PROCEDURAL_CATEGORIES)
        return [canonical_name(c, list(PROCEDURAL_ALL), "procedural category (generation.categories)") for c in wanted]
    if not wanted:
        return list(PROCEDURAL_CATEGORIES)
    known = [*gen.part_names, *SHAPENETPART_PARTS, *PSB_PARTS]
    out = []
    for c in wanted:
        try:
            out.append(canonical_name(c, known, "category"))
        except ValueError:
            raise ConfigError(
                f"generation.categories: {c!r} has no part names; known: {', '.join(sorted(set(known)))} — "
                f"for a category of your own set generation.part_names.{c}=[part,...]"
            ) from None
    return out


def category_parts(cfg: Config, categories: list[str]) -> dict[str, list[str]]:
    """Part names (label order) of each category: procedural's, or the known tables'."""
    if cfg.generation.name == "procedural":
        return {c: list(PROCEDURAL_PARTS[c]) for c in categories}
    return {c: part_names_for(c, cfg.generation.part_names) for c in categories}


def shape_id_of(name: str, category: str, index: int) -> str:
    """The id generator ``name`` gives instance ``index`` of ``category`` (canonical spelling)."""
    if name == "procedural":
        return procedural.shape_id(category, index)
    return f"generated/{category}/{index:05d}"


def plan_rows(cfg: Config, done: set[str]) -> tuple[list[dict[str, Any]], int, int]:
    """The rows still to make → (rows, asked, skipped).

    A row: shape_id, category, index, prompt ("" for procedural), seed (procedural: the
    run seed; shap_e: the diffusion seed of this shape, ``derive_seed(seed, shape_id)``).
    """
    gen = cfg.generation
    if gen.name == "shap_e":
        check_templates(gen.templates, gen.styles)
    categories = resolve_categories(cfg)
    category_parts(cfg, categories)  # unknown part names fail here, not in a worker
    count = count_per_category(cfg)
    rows, asked, skipped = [], 0, 0
    if gen.name == "procedural":  # data.split's index range, as data.source=procedural reads it
        indices = procedural.split_indices(cfg.data.split, count, gen.start)
    else:
        indices = range(gen.start, gen.start + count)
    for category in categories:
        for index in indices:
            asked += 1
            shape_id = shape_id_of(gen.name, category, index)
            if shape_id in done:
                skipped += 1
                continue
            if gen.name == "procedural":
                prompt, seed = "", cfg.seed
            else:
                prompt = make_prompt(category, index, cfg.seed, gen.templates, gen.styles)
                seed = derive_seed(cfg.seed, shape_id)
            rows.append({"shape_id": shape_id, "category": category, "index": index, "prompt": prompt, "seed": seed})
    return rows, asked, skipped


def generator_actor_options(cfg: Config) -> Pool:
    """generation.actors (0: cluster.teacher_actors), generation.gpus (< 0: cluster.teacher_gpus)."""
    size = cfg.generation.actors or cfg.cluster.teacher_actors
    gpus = cfg.generation.gpus if cfg.generation.gpus >= 0 else cfg.cluster.teacher_gpus
    if size < 1:
        raise ValueError(f"generation.actors / cluster.teacher_actors = {size} must be >= 1")
    return Pool(size=size, num_cpus=ACTOR_CPUS, num_gpus=float(gpus), batch_size=cfg.generation.batch_size)


def summarise(
    cfg: Config,
    asked: int,
    skipped: int,
    results: list[tuple[str, str]],
    parts: set[str],
    seconds: float,
    storage: Storage,
    table_dir: str,
) -> dict[str, Any]:
    """A generation's summary: {generator, asked, new, rejected, skipped, reject_kinds, parts,
    shapes_per_s, table}: ``new`` shapes were written, ``rejected`` went to ``{run}/rejects/``
    with reasons, ``skipped`` were done before; ``new + rejected + skipped == asked``."""
    rejected = [err for _, err in results if err]
    made = len(results)
    return {
        "generator": cfg.generation.name,
        "asked": asked,
        "new": made - len(rejected),
        "rejected": len(rejected),
        "skipped": skipped,
        "reject_kinds": dict(sorted(Counter(reason_kind(r) for r in rejected).items())),
        "parts": len(parts),
        "shapes_per_s": round(made / seconds, 3) if seconds > 0 and made else 0.0,
        "table": storage.uri(table_dir),
    }


def default_table_dir(cfg: Config) -> str:
    """Where a generation writes unless told: ``{run}/{generation.output}`` (``shapes``)."""
    return RunPaths(cfg.run) / (cfg.generation.output.strip("/") or "shapes")


def generate_pass(cfg: Config, storage: Storage, table_dir: str, todo: int) -> Pass:
    """The generation pass over ``plan_rows``' rows (``todo`` of them)."""
    gen = cfg.generation
    per_part = part_shapes(todo)
    common = {"storage": storage, "run": cfg.run, "table_dir": table_dir}
    if gen.name == "procedural":
        kwargs = {**common, "num_points": cfg.data.num_points, "check": gen.filter}
        return Pass(
            "generate procedural",
            (Step(procedural_batch, kwargs, Pool(batch_size=per_part, tasks=True)),),
            unit="shape",
        )
    pool = generator_actor_options(cfg)
    parts = category_parts(cfg, resolve_categories(cfg))
    finish = {**common, "parts": parts, "gen": gen, "run_seed": cfg.seed, "num_points": cfg.data.num_points}
    finish_pool = Pool(batch_size=min(per_part, max(pool.batch_size, 1) * 4), tasks=True)
    steps = (Step(ShapEStage, {"gen": gen}, pool), Step(finish_shap_e_batch, finish, finish_pool))
    return Pass("generate shap_e", steps, unit="shape")


def generate(cfg: Config, storage: Storage, table_dir: str | None = None) -> dict[str, Any]:
    """Make the shapes of the plan not yet done → the summary (``summarise``)."""
    table_dir = table_dir or default_table_dir(cfg)
    rows, asked, skipped = plan_rows(cfg, storage.done_ids(table_dir))
    result = run_pass(cfg, generate_pass(cfg, storage, table_dir, len(rows)), rows)
    results: dict[str, str] = {}
    parts: set[str] = set()
    for r in result.rows:  # a retried task reports its part again: one result a shape
        results.setdefault(str(r["shape_id"]), str(r["error"]))
        parts.add(str(r["part"]))
    missing = len(rows) - len(results)
    if missing:  # cannot happen unless rows were dropped; they stay undone for a re-run
        log.error("generate: %d shapes did not come back and stay undone", missing)
    summary = summarise(cfg, asked, skipped, list(results.items()), parts, result.seconds, storage, table_dir)
    log.info("generate: %s", summary)
    return summary
