"""The generation stage: (category, index) prompts → shapes → quality filters → shape table.

One plan, two drivers, one contract (DESIGN §2):

plan (driver, pure)
    ``plan_rows``: one row per (category, index) for ``generation.categories`` ×
    ``generation.start .. start + count - 1`` with its shape id, prompt and seed; rows whose
    id is already done in the table (written or rejected) are dropped here, before any
    worker sees them, so a re-run only makes what is missing.
``generate_on_ray``
    The rows become a Ray Dataset with ``from_items(..., override_num_blocks=...)``: one
    block per part instead of ``from_items``' default of one block per row (a million
    one-row blocks would drown the scheduler), so no repartition pass is needed.
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
``generate_local``
    The same functions in this process, a tqdm bar, no Ray (laptops, small corpora).

Every asked shape ends in exactly one of: a row of a part (``new``) or a reject with its
reason in ``{run}/rejects/`` (stage ``generate``, ``rejected``); both are done ids of a
part, so ``new + rejected + skipped == asked``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from cluster.config import Config
from cluster.layout import shape_summary
from cluster.rejects import write_rejects
from cluster.storage import Storage
from distill.categories import PSB_PARTS, SHAPENETPART_PARTS, canonical_name, part_names_for
from distill.records import Shape, shapes_to_table
from distill.sampling import derive_seed
from generation import procedural
from generation.config import GenerationConfig
from generation.filters import check_mesh, check_shape, reason_kind
from generation.procedural import ALL_CATEGORIES as PROCEDURAL_ALL
from generation.procedural import CATEGORIES as PROCEDURAL_CATEGORIES
from generation.procedural import PROCEDURAL_PARTS
from generation.prompts import check_templates, make_prompt

log = logging.getLogger(__name__)

STAGE = "generate"
DEFAULT_COUNT = 24
"""Shapes per category when neither generation.count nor data.per_category is set."""
MAX_PART_SHAPES = 64
"""Most shapes per part (~6 MB of procedural shapes): a stopped run redoes at most this many."""
MIN_PARTS = 8
"""Small runs still write several parts, so several tasks share the work."""
ACTOR_CPUS = 1.0
ACTOR_FAULT_OPTIONS = {"max_restarts": -1, "max_task_retries": 3}
"""A dead generator actor is replaced (reloading the model) and its batch retried; a batch
that kills 3 actors fails the run (a re-run resumes)."""

RESULT_SCHEMA = pa.schema([("shape_id", pa.string()), ("error", pa.string()), ("part", pa.string())])
"""What a writing task hands the driver: one row per asked shape, error "" when written."""


# -- the plan (pure) -------------------------------------------------------------------
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
    procedural ones. Raises ``ValueError`` naming the key for an unknown category."""
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
            raise ValueError(
                f"generation.categories: {c!r} has no part names; known: {', '.join(sorted(set(known)))}. "
                f"For a category of your own set generation.part_names.{c}=[part,...]"
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


@dataclass(frozen=True)
class GeneratorActorOptions:
    """The shap_e pool: ``size`` actors of ``num_gpus`` GPUs, ``batch_size`` prompts a call."""

    size: int
    num_cpus: float
    num_gpus: float
    batch_size: int


def generator_actor_options(cfg: Config) -> GeneratorActorOptions:
    """generation.actors (0: cluster.teacher_actors), generation.gpus (< 0: cluster.teacher_gpus)."""
    size = cfg.generation.actors or cfg.cluster.teacher_actors
    gpus = cfg.generation.gpus if cfg.generation.gpus >= 0 else cfg.cluster.teacher_gpus
    if size < 1:
        raise ValueError(f"generation.actors / cluster.teacher_actors = {size} must be >= 1")
    return GeneratorActorOptions(
        size=size, num_cpus=ACTOR_CPUS, num_gpus=float(gpus), batch_size=cfg.generation.batch_size
    )


# -- writing (in whichever process finished the shapes) --------------------------------
def part_name(ids: list[str]) -> str:
    """A part's file name from its ids: a retried task rewrites the same file."""
    digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def write_results(
    storage: Storage, run: str, table_dir: str, ids: list[str], shapes: list[Shape], rejects: list[tuple[str, str]]
) -> pa.Table:
    """Write the rejects, then one part with ``shapes`` whose done ids are all ``ids``
    (written and rejected) → ``RESULT_SCHEMA`` rows, one per id."""
    if not ids:
        return RESULT_SCHEMA.empty_table()
    # Rejects first: a crash between the two writes redoes (and re-rejects) the shapes
    # rather than marking them done without their reasons.
    write_rejects(storage, run, STAGE, rejects)
    name = storage.write_part(
        table_dir, shapes_to_table(shapes), done_ids=ids, name=part_name(ids), summary=shape_summary(shapes)
    )
    errors = dict(rejects)
    return pa.table(
        {"shape_id": ids, "error": [errors.get(i, "") for i in ids], "part": [name] * len(ids)}, schema=RESULT_SCHEMA
    )


def _reason(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {e}"


# -- procedural: one CPU task per block ------------------------------------------------
def procedural_rows(
    rows: list[dict[str, Any]], num_points: int, check: bool
) -> tuple[list[Shape], list[tuple[str, str]]]:
    """Make, then filter, each row's procedural shape → (shapes, (id, reason) rejects)."""
    from generation.procedural import make_shape

    shapes, rejects = [], []
    for row in rows:
        sid = str(row["shape_id"])
        try:
            shape = make_shape(str(row["category"]), int(row["index"]), int(row["seed"]), num_points)
            if shape.shape_id != sid:  # the plan and the generator must agree on ids
                raise ValueError(f"generator made {shape.shape_id}, plan expected {sid}")
            reason = check_shape(shape) if check else None
        except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
            rejects.append((sid, _reason(e)))
            continue
        if reason is None:
            shapes.append(shape)
        else:
            rejects.append((sid, reason))
    return shapes, rejects


def _batch_rows(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    n = len(batch["shape_id"])
    return [{k: batch[k][i] for k in columns} for i in range(n)]


ROW_COLUMNS = ("shape_id", "category", "index", "prompt", "seed")


def procedural_batch(
    batch: dict[str, np.ndarray], storage: Storage, run: str, table_dir: str, num_points: int, check: bool
) -> pa.Table:
    """``map_batches`` function: one block of plan rows → its part written → result rows."""
    rows = _batch_rows(batch, ROW_COLUMNS)
    shapes, rejects = procedural_rows(rows, num_points, check)
    return write_results(storage, run, table_dir, [str(r["shape_id"]) for r in rows], shapes, rejects)


# -- shap_e: GPU actors, then CPU tasks ------------------------------------------------
class ShapEStage:
    """Ray Data callable class: the Shap-E pipeline, loaded once per actor; per batch of
    plan rows, the batched diffusion and each shape's SDF lattice (``sdf`` (B, G, G, G)
    float32; ``error`` set and a zero lattice where the batch failed)."""

    def __init__(self, gen: GenerationConfig) -> None:
        from generation.shap_e import ShapEGenerator

        self.grid_size = gen.grid_size
        self.generator = ShapEGenerator(
            gen.model,
            gen.device,
            num_inference_steps=gen.num_inference_steps,
            guidance_scale=gen.guidance_scale,
            grid_size=gen.grid_size,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["shape_id"])
        g = self.grid_size
        errors = [""] * n
        try:
            grids = self.generator.sdf_grids([str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]])
            sdf = np.stack(grids).astype(np.float32)
        except Exception as e:  # noqa: BLE001 - a failed batch rejects its shapes, the run goes on
            log.exception("shap_e batch of %d failed", n)
            errors = [_reason(e)] * n
            sdf = np.zeros((n, g, g, g), np.float32)
        out = {k: batch[k] for k in ROW_COLUMNS}
        out["sdf"] = sdf
        out["error"] = np.array(errors, dtype=object)
        out["model"] = np.array([self.generator.model] * n, dtype=object)
        return out


def shap_e_rows(
    rows: list[dict[str, Any]],
    parts: dict[str, list[str]],
    gen: GenerationConfig,
    run_seed: int,
    num_points: int,
) -> tuple[list[Shape], list[tuple[str, str]]]:
    """Rows with an ``sdf`` lattice → marching cubes → filters → shapes; (shapes, rejects)."""
    from generation.shap_e import generated_shape, mesh_from_sdf

    shapes, rejects = [], []
    for row in rows:
        sid = str(row["shape_id"])
        if row.get("error"):
            rejects.append((sid, str(row["error"])))
            continue
        category, index = str(row["category"]), int(row["index"])
        try:
            mesh = mesh_from_sdf(row["sdf"])
            reason = check_mesh(mesh, category) if gen.filter else None
            if reason is None and len(mesh.faces) == 0:
                reason = "empty: the SDF has no zero crossing (no surface)"
            if reason is None:
                meta = {
                    "prompt": str(row["prompt"]),
                    "seed": int(row["seed"]),
                    "generator": "shap_e",
                    "model": str(row.get("model", gen.model)),
                    "num_inference_steps": gen.num_inference_steps,
                    "guidance_scale": gen.guidance_scale,
                    "grid_size": gen.grid_size,
                }
                sample_seed = derive_seed(run_seed, sid + "/sample")
                shapes.append(generated_shape(mesh, category, index, parts[category], num_points, sample_seed, meta))
        except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
            reason = _reason(e)
        if reason is not None:
            rejects.append((sid, f"{reason} (prompt {str(row['prompt'])!r})"))
    return shapes, rejects


def finish_shap_e_batch(
    batch: dict[str, np.ndarray],
    storage: Storage,
    run: str,
    table_dir: str,
    parts: dict[str, list[str]],
    gen: GenerationConfig,
    run_seed: int,
    num_points: int,
) -> pa.Table:
    """``map_batches`` function after the actors: decode, filter, sample, write one part."""
    rows = _batch_rows(batch, (*ROW_COLUMNS, "sdf", "error", "model"))
    shapes, rejects = shap_e_rows(rows, parts, gen, run_seed, num_points)
    return write_results(storage, run, table_dir, [str(r["shape_id"]) for r in rows], shapes, rejects)


# -- the drivers -----------------------------------------------------------------------
def _summary(
    cfg: Config,
    asked: int,
    skipped: int,
    results: list[tuple[str, str]],
    parts: set[str],
    seconds: float,
    storage: Storage,
    table_dir: str,
) -> dict[str, Any]:
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
    return f"{cfg.run}/{cfg.generation.output.strip('/') or 'shapes'}"


def generate_local(cfg: Config, storage: Storage, table_dir: str | None = None) -> dict[str, Any]:
    """Generation in this process → the summary (see ``generate_on_ray``)."""
    table_dir = table_dir or default_table_dir(cfg)
    gen = cfg.generation
    rows, asked, skipped = plan_rows(cfg, storage.done_ids(table_dir))
    chunk = part_shapes(len(rows))
    start = time.perf_counter()
    results: list[tuple[str, str]] = []
    written: set[str] = set()
    stage = ShapEStage(gen) if gen.name == "shap_e" and rows else None
    parts = category_parts(cfg, resolve_categories(cfg))
    with tqdm(total=len(rows), desc=f"generate {gen.name}", unit="shape", disable=not cfg.progress) as bar:
        for lo in range(0, len(rows), chunk):
            block = rows[lo : lo + chunk]
            if stage is None:
                shapes, rejects = procedural_rows(block, cfg.data.num_points, gen.filter)
            else:
                done_rows = []
                for b in range(0, len(block), gen.batch_size):
                    sub = block[b : b + gen.batch_size]
                    out = stage({k: np.array([r[k] for r in sub], dtype=object) for k in ROW_COLUMNS})
                    done_rows += _batch_rows(out, (*ROW_COLUMNS, "sdf", "error", "model"))
                shapes, rejects = shap_e_rows(done_rows, parts, gen, cfg.seed, cfg.data.num_points)
            table = write_results(storage, cfg.run, table_dir, [r["shape_id"] for r in block], shapes, rejects)
            results += list(zip(table.column("shape_id").to_pylist(), table.column("error").to_pylist()))
            written.update(table.column("part").to_pylist())
            bar.update(len(block))
    summary = _summary(cfg, asked, skipped, results, written, time.perf_counter() - start, storage, table_dir)
    log.info("generate (local): %s", summary)
    return summary


def build_dataset(cfg: Config, storage: Storage, table_dir: str, rows: list[dict[str, Any]]) -> Any:
    """The lazy Ray Dataset of ``RESULT_SCHEMA`` rows (parts are written as it runs)."""
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
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args such as max_restarts and has no named one yet.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            ShapEStage,
            fn_constructor_kwargs={"gen": gen},
            batch_size=pool.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.size),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            **ACTOR_FAULT_OPTIONS,
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
    """Generation on the connected Ray cluster (``cluster.runtime.connect`` first).

    → {generator, asked, new, rejected, skipped, reject_kinds, parts, shapes_per_s, table}:
    ``new`` shapes were written, ``rejected`` went to ``{run}/rejects/`` with reasons,
    ``skipped`` were done before; ``new + rejected + skipped == asked``.
    """
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
    summary = _summary(cfg, asked, skipped, results, parts, time.perf_counter() - start, storage, table_dir)
    log.info("generate (ray): %s", summary)
    return summary


def generate_shapes(
    cfg: Config, storage: Storage, table_dir: str | None = None, use_ray: bool | None = None
) -> dict[str, Any]:
    """Make the shape table ``table_dir`` (default ``{run}/{generation.output}``) as configured.

    use_ray: True → connect (``cluster.runtime.connect``) and run on Ray; False → this
    process; None → Ray when it is already initialised or a cluster address is configured
    (``cluster.address`` / ``RAY_ADDRESS``), else this process.
    """
    from cluster.runtime import cluster_address, connect

    if use_ray is None:
        import ray

        use_ray = ray.is_initialized() or bool(cluster_address(cfg.cluster))
    if not use_ray:
        return generate_local(cfg, storage, table_dir)
    connect(cfg.cluster)
    return generate_on_ray(cfg, storage, table_dir)
