"""The extraction stage: shape table → render → teacher → back-projection → knowledge table.

Two drivers with one contract (DESIGN §2):

``extract_on_ray``
    Ray Data streaming over the unfinished shapes (``from_items``), in one of two layouts (``cluster.extract_layout``; ``auto`` fuses when the teacher has no GPU):

    *split* — render in CPU tasks (``render_refs``, one shape a block, ``cluster.render_cpus``
    each, reading their rows from the shape table), then teach in a fixed pool of
    ``cluster.teacher_actors`` actors (``TeachStage``: the model is loaded once per actor;
    ``cluster.teacher_gpus`` each). Back-projection runs inside the teacher actor: it
    costs < 1 ms a shape against ~120 ms for the simulated teacher at 800² (measured), and
    a stage of its own would ship every view's masks through the object store again.
    This is the GPU cluster's layout: rendering spreads over CPU nodes, GPUs only teach.

    *fused* — one actor stage (``ExtractStage``) that reads, renders, teaches and
    back-projects each shape where it is, a few shapes a call (``fused_batch_shapes``), in
    a pool that grows to every CPU. On CPU-only
    machines nothing is gained by splitting, and the views (9 MB a shape at 320², 58 MB
    at 800²) never cross the object store.

    The driver consumes the small per-shape unit rows with ``iter_batches`` and writes
    each batch as one knowledge part, so every part is written once, by one process.
``extract_local``
    The same three steps in this process, with a tqdm bar: laptops, and the baseline of
    the scaling benchmark.

Both skip the shapes already done (``Storage.done_ids`` of the knowledge folder), write
knowledge in atomic parts whose done ids are exactly the shapes of the part (with their
rejects), and send a shape whose render or teacher raises to ``{run}/rejects/`` (stage
``extract``) with its reason, marked done, while the rest go on. The knowledge of a shape
depends only on the config, the seed and the shape: both drivers give identical units.

A teacher actor that dies (a crash, an OOM kill, a lost node) is restarted by Ray and
the batch it held is retried on the new actor (``actor_fault_options``); a batch that
keeps killing its actor past the retries fails the run, which a re-run resumes.

Measured (16 procedural shapes, 800², simulated teacher, 2 CPUs, ``cluster.render_cpus=0.5``
so that two render tasks run beside the teacher actor): per shape, render 0.35-0.45
CPU-s, teacher 0.12, back-projection < 0.001, the hand-off of its ~58 MB of views
~35 ms. Per run, the teacher actor's start (a new process importing torch through
``distill.extract``: ~2.3 CPU-s) is the largest fixed cost, then Ray Data and the driver
(~0.8 CPU-s); a first run also starts the render workers (~2.5 CPU-s each).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from cluster.rejects import write_rejects
from cluster.runtime import (
    RENDER_BATCH_SHAPES,
    configure_data_context,
    extract_fused,
    fused_actor_options,
    render_resources,
    teacher_actor_options,
)
from cluster.storage import Storage
from distill.config import Config, RenderConfig, TeacherConfig
from distill.extract import render, teach, to_units
from distill.records import KnowledgeUnits, Shape, row_to_shape, units_to_table
from distill.teachers import Teacher, build_teacher
from distill.views import Cameras, RenderedViews

log = logging.getLogger(__name__)

STAGE = "extract"
MAX_PART_SHAPES = 32
"""Most shapes per knowledge part: a stopped run redoes at most this many."""
MIN_PARTS = 8
"""Small runs still write several parts, so progress lands on storage as it is made."""
MAX_INPUT_BLOCKS = 2000
"""More input blocks than this only adds per-object overhead: they already outnumber the
CPUs of the largest cluster in ray_cluster.yaml (8 × 16) many times over."""
ACTOR_MAX_RESTARTS = -1
"""A dead teacher actor is always replaced (each replacement reloads the model)."""
ACTOR_MAX_TASK_RETRIES = 3
"""Attempts of one batch on replaced actors before the run fails: a batch that kills
every actor it meets is a poison pill, not bad luck."""

TeacherFactory = Callable[[TeacherConfig, int], Teacher]
"""``(teacher config, seed) → teacher``; ``build_teacher`` unless a test injects one."""


def _default_factory(cfg: TeacherConfig, seed: int) -> Teacher:
    return build_teacher(cfg, seed=seed)


# -- decisions (pure) ------------------------------------------------------------------
def part_shapes(todo: int) -> int:
    """Shapes per knowledge part for a run of ``todo`` shapes: ≥ MIN_PARTS parts, ≤ MAX_PART_SHAPES each."""
    if todo < 0:
        raise ValueError(f"todo={todo} must be >= 0")
    return max(1, min(MAX_PART_SHAPES, math.ceil(todo / MIN_PARTS)))


ShapeRef = tuple[str, str]
"""``(part file name, shape id)``: where an unfinished shape's row lives in the shape table."""


def plan_shapes(part_ids: dict[str, list[str]], done: set[str]) -> tuple[list[ShapeRef], int]:
    """``{part name: its shape ids}`` and the done ids → (the unfinished shapes, once each,
    in table order; the number of rows skipped as done or as a repeat of an earlier row)."""
    refs: list[ShapeRef] = []
    seen, skipped = set(done), 0
    for name, ids in part_ids.items():
        for sid in ids:
            if sid in seen:
                skipped += 1
            else:
                refs.append((name, sid))
                seen.add(sid)
    return refs, skipped


def input_blocks(todo: int) -> int:
    """Blocks of the input list: one shape per block (a block is what one render task
    takes, so each shape is its own task) up to MAX_INPUT_BLOCKS, then several a block."""
    return max(1, min(todo, MAX_INPUT_BLOCKS))


FUSED_MAX_BATCH = 16
"""Most shapes per fused actor call (a crashed call redoes at most this many)."""


def fused_batch_shapes(todo: int, actors: int) -> int:
    """Shapes per fused actor call: ~4 calls per actor, at most ``FUSED_MAX_BATCH``.

    Shapes planned together mostly share a shape part, so a batch reads it once, and Ray
    Data's per-call overhead is paid once a batch. Measured (120 procedural shapes, 320²,
    2 CPUs): one shape a call streamed 14 shapes/s, batches of 15 streamed 19 (one
    process: 8-10).
    """
    if todo < 0 or actors < 1:
        raise ValueError(f"todo={todo} must be >= 0 and actors={actors} >= 1")
    return max(1, min(FUSED_MAX_BATCH, todo // (4 * actors)))


def actor_fault_options() -> dict[str, int]:
    """Ray remote args that restart a dead teacher actor and retry its batch.

    Setting them explicitly also keeps Ray Data from fusing the render tasks into the
    teacher actors (it fuses a task stage into a following actor stage whose remote args
    match), which would render on the teacher's few actors instead of every CPU.
    """
    return {"max_restarts": ACTOR_MAX_RESTARTS, "max_task_retries": ACTOR_MAX_TASK_RETRIES}


# -- shapes and views as batch columns -------------------------------------------------
def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _shape_header(shape: Shape) -> str:
    """What the teacher needs of a shape besides its points, as one JSON string."""
    return json.dumps(
        {
            "shape_id": shape.shape_id,
            "category": shape.category,
            "part_names": list(shape.part_names),
            "source": shape.source,
        }
    )


def _teacher_shape(header: str, points: np.ndarray) -> Shape:
    """The shape as the teacher sees it: id, category, part names, points (no mesh or labels)."""
    h = json.loads(header)
    return Shape(h["shape_id"], h["category"], h["part_names"], np.asarray(points, np.float32), source=h["source"])


VIEW_COLUMNS = ("images", "depth", "pixel_labels", "point_uv", "point_visible")
CAMERA_COLUMNS = ("cam_eye", "cam_world_to_cam", "cam_focal", "cam_elev_azim")


def views_to_columns(views: RenderedViews) -> dict[str, np.ndarray]:
    """``RenderedViews`` → arrays of one row: images (V,H,W,3) uint8 · depth (V,H,W)
    float32 · pixel_labels (V,H,W) int16 · point_uv (V,N,2) float32 · point_visible (V,N)
    bool · the cameras' eye (V,3), world_to_cam (V,4,4), focal (V,), elev_azim (V,2)."""
    c = views.cameras
    return {
        "images": views.images,
        "depth": views.depth,
        "pixel_labels": views.pixel_labels,
        "point_uv": views.point_uv,
        "point_visible": views.point_visible,
        "cam_eye": c.eye,
        "cam_world_to_cam": c.world_to_cam,
        "cam_focal": c.focal,
        "cam_elev_azim": c.elev_azim,
    }


def columns_to_views(cols: dict[str, np.ndarray]) -> RenderedViews:
    """The inverse of ``views_to_columns`` (exact: same dtypes, same values)."""
    images = np.asarray(cols["images"])
    cams = Cameras(
        eye=np.asarray(cols["cam_eye"]),
        world_to_cam=np.asarray(cols["cam_world_to_cam"]),
        focal=np.asarray(cols["cam_focal"]),
        image_size=int(images.shape[1]),
        elev_azim=np.asarray(cols["cam_elev_azim"]),
    )
    return RenderedViews(
        images=images,
        depth=np.asarray(cols["depth"]),
        pixel_labels=np.asarray(cols["pixel_labels"]),
        point_uv=np.asarray(cols["point_uv"]),
        point_visible=np.asarray(cols["point_visible"]),
        cameras=cams,
    )


def _empty_view_columns(image_size: int, num_points: int) -> dict[str, np.ndarray]:
    """Zero-view placeholders of a shape that failed to render (rows keep one schema)."""
    s, n = image_size, max(num_points, 0)
    return {
        "images": np.zeros((0, s, s, 3), np.uint8),
        "depth": np.zeros((0, s, s), np.float32),
        "pixel_labels": np.zeros((0, s, s), np.int16),
        "point_uv": np.zeros((0, n, 2), np.float32),
        "point_visible": np.zeros((0, n), bool),
        "cam_eye": np.zeros((0, 3), np.float32),
        "cam_world_to_cam": np.zeros((0, 4, 4), np.float32),
        "cam_focal": np.zeros(0, np.float32),
        "cam_elev_azim": np.zeros((0, 2), np.float32),
    }


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """Rows → one batch column: stacked when shapes agree, else an object array of
    arrays (Ray Data stores it as a variable-shaped tensor column)."""
    if len(values) == 1:  # the usual one-shape batch: a view, not a copy of ~60 MB
        return values[0][None]
    if all(v.shape == values[0].shape for v in values):
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# -- stage 1: render (CPU tasks) -------------------------------------------------------
def render_rows(rows: list[dict[str, Any]], render_cfg: RenderConfig) -> dict[str, np.ndarray]:
    """Shape-table rows → one batch: shape_id, header (JSON), points (N,3), error ("" when
    rendered) and the view columns of ``views_to_columns``."""
    out: dict[str, list[Any]] = {k: [] for k in ("shape_id", "header", "points", "error")}
    cols: list[dict[str, np.ndarray]] = []
    for row in rows:
        shape_id = str(row.get("shape_id"))
        try:
            shape = row_to_shape(row)
            views = render(shape, render_cfg)
            cols.append(views_to_columns(views))
            out["header"].append(_shape_header(shape))
            out["points"].append(shape.points)
            out["error"].append("")
        except Exception as e:  # noqa: BLE001 - any failure of one shape rejects that shape only
            n = int(row.get("num_points") or 0)
            cols.append(_empty_view_columns(render_cfg.image_size, n))
            out["header"].append("{}")
            out["points"].append(np.zeros((n, 3), np.float32))
            out["error"].append(f"render: {_reason(e)}")
        out["shape_id"].append(shape_id)
    batch = {
        "shape_id": np.array(out["shape_id"], dtype=object),
        "header": np.array(out["header"], dtype=object),
        "error": np.array(out["error"], dtype=object),
        "points": _stack(out["points"]),
    }
    for k in VIEW_COLUMNS + CAMERA_COLUMNS:
        batch[k] = _stack([c[k] for c in cols])
    return batch


def load_rows(storage: Storage, shapes_dir: str, refs: list[ShapeRef]) -> list[dict[str, Any]]:
    """The shape-table rows of ``refs``, in their order; each part file is read once."""
    by_part: dict[str, list[str]] = {}
    for part, sid in refs:
        by_part.setdefault(part, []).append(sid)
    rows: dict[ShapeRef, dict[str, Any]] = {}
    for part, ids in by_part.items():
        with storage.fs.open(storage.path(shapes_dir, part), "rb") as f:
            table = pq.read_table(f)
        # Only the wanted rows become Python objects (a part holds up to 32 shapes).
        table = table.filter(pc.is_in(table.column("shape_id"), value_set=pa.array(sorted(set(ids)), pa.string())))
        for row in table.to_pylist():
            rows.setdefault((part, row["shape_id"]), row)
    missing = [r for r in refs if r not in rows]
    if missing:  # the table changed under a running stage: fail loudly, a re-run re-plans
        raise RuntimeError(f"{storage.uri(shapes_dir)}: rows vanished since planning: {missing[:5]}")
    return [rows[r] for r in refs]


def render_refs(
    batch: dict[str, np.ndarray], storage: Storage, shapes_dir: str, render_cfg: RenderConfig
) -> dict[str, np.ndarray]:
    """``map_batches`` function of the render stage: shape refs in (``part``, ``shape_id``),
    their rows read from the shape table, rendered views out (``render_rows``)."""
    refs = [(str(p), str(s)) for p, s in zip(batch["part"], batch["shape_id"])]
    return render_rows(load_rows(storage, shapes_dir, refs), render_cfg)


# -- stage 2: teacher + back-projection (actor pool) -----------------------------------
SHAPE_UNITS_SCHEMA = pa.schema(
    [
        ("shape_id", pa.string()),
        ("error", pa.string()),
        ("teacher", pa.string()),
        ("round", pa.int16()),
        ("view", pa.list_(pa.int16())),
        ("label", pa.list_(pa.int16())),
        ("score", pa.list_(pa.float32())),
        ("point_idx", pa.list_(pa.list_(pa.int32()))),
    ]
)
"""What the teacher stage hands the driver: one row per shape, its units as lists."""


def units_to_row(shape_id: str, units: KnowledgeUnits | None, error: str, teacher: str) -> dict[str, Any]:
    """One shape's ``SHAPE_UNITS_SCHEMA`` row: its units, or none and the ``error``."""
    if units is None:
        empty: list[Any] = []
        return {
            "shape_id": shape_id,
            "error": error,
            "teacher": teacher,
            "round": 0,
            "view": empty,
            "label": empty,
            "score": empty,
            "point_idx": empty,
        }
    return {
        "shape_id": shape_id,
        "error": "",
        "teacher": units.teacher,
        "round": units.round,
        "view": units.view.astype(np.int16),
        "label": units.label.astype(np.int16),
        "score": units.score.astype(np.float32),
        "point_idx": [units.unit_points(k).astype(np.int32) for k in range(len(units))],
    }


def row_to_units(row: dict[str, Any]) -> KnowledgeUnits:
    """A ``SHAPE_UNITS_SCHEMA`` row (as from ``to_pylist``) → ``KnowledgeUnits``."""
    return KnowledgeUnits.from_lists(
        row["shape_id"],
        list(row["view"]),
        list(row["label"]),
        list(row["score"]),
        [np.asarray(p, np.int64) for p in row["point_idx"]],
        teacher=row["teacher"],
        round=row["round"],
    )


class TeachStage:
    """Ray Data callable class: the teacher, loaded once per actor, then per batch of
    rendered shapes their predictions and back-projected units."""

    def __init__(self, teacher_cfg: TeacherConfig, seed: int, teacher_factory: TeacherFactory | None = None) -> None:
        self.teacher = (teacher_factory or _default_factory)(teacher_cfg, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["shape_id"])):
            shape_id = str(batch["shape_id"][i])
            error = str(batch["error"][i])
            if error:
                rows.append(units_to_row(shape_id, None, error, self.teacher.name))
                continue
            try:
                views = columns_to_views({k: batch[k][i] for k in VIEW_COLUMNS + CAMERA_COLUMNS})
                shape = _teacher_shape(str(batch["header"][i]), batch["points"][i])
                preds = teach(self.teacher, views, shape)
                units = to_units(views, preds, shape, self.teacher)
                rows.append(units_to_row(shape_id, units, "", self.teacher.name))
            except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                rows.append(units_to_row(shape_id, None, f"teacher: {_reason(e)}", self.teacher.name))
        return pa.Table.from_pylist(rows, schema=SHAPE_UNITS_SCHEMA)


class ExtractStage(TeachStage):
    """Ray Data callable class of the fused layout: per batch of shape refs, each shape's
    row read, rendered, taught and back-projected in this actor (``extract_local``'s
    steps); the teacher is loaded once per actor."""

    def __init__(
        self,
        teacher_cfg: TeacherConfig,
        seed: int,
        storage: Storage,
        shapes_dir: str,
        render_cfg: RenderConfig,
        teacher_factory: TeacherFactory | None = None,
    ) -> None:
        super().__init__(teacher_cfg, seed, teacher_factory)
        self.storage, self.shapes_dir, self.render_cfg = storage, shapes_dir, render_cfg

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        refs = [(str(p), str(s)) for p, s in zip(batch["part"], batch["shape_id"])]
        rows = []
        for row in load_rows(self.storage, self.shapes_dir, refs):
            sid = str(row["shape_id"])
            try:
                shape = row_to_shape(row)
            except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                rows.append(units_to_row(sid, None, f"render: {_reason(e)}", self.teacher.name))
                continue
            _, units, error = _extract_one(shape, self.render_cfg, self.teacher)
            rows.append(units_to_row(sid, units, error, self.teacher.name))
        return pa.Table.from_pylist(rows, schema=SHAPE_UNITS_SCHEMA)


# -- writing (driver) ------------------------------------------------------------------
class _PartWriter:
    """Accumulates finished shapes and writes them as knowledge parts (rejects first)."""

    def __init__(self, storage: Storage, run: str, knowledge_dir: str) -> None:
        self.storage, self.run, self.knowledge_dir = storage, run, knowledge_dir
        self.counts = {"new": 0, "rejected": 0, "units": 0}
        self.parts = 0

    def write(self, results: list[tuple[str, KnowledgeUnits | None, str]]) -> None:
        """``(shape id, units or None, error)`` of the shapes of one part."""
        if not results:
            return
        rejects = [(sid, err) for sid, u, err in results if u is None]
        units = [u for _, u, _ in results if u is not None]
        # Rejects first: a crash between the two writes redoes (and re-rejects) the shape
        # rather than marking it done without its reason.
        write_rejects(self.storage, self.run, STAGE, rejects)
        table = units_to_table(units)
        self.storage.write_part(self.knowledge_dir, table, done_ids=[sid for sid, _, _ in results])
        self.parts += 1
        self.counts["new"] += len(units)
        self.counts["rejected"] += len(rejects)
        self.counts["units"] += table.num_rows


def _plan(storage: Storage, shapes_dir: str, knowledge_dir: str) -> tuple[list[ShapeRef], int]:
    return plan_shapes(storage.part_column(shapes_dir, "shape_id"), storage.done_ids(knowledge_dir))


def _summary(
    counts: dict[str, int], skipped: int, parts: int, seconds: float, storage: Storage, knowledge_dir: str
) -> dict[str, Any]:
    new = counts["new"] + counts["rejected"]
    return {
        **counts,
        "skipped": skipped,
        "parts": parts,
        "shapes_per_s": round(new / seconds, 3) if seconds > 0 and new else 0.0,
        "table": storage.uri(knowledge_dir),
    }


# -- the two drivers ---------------------------------------------------------------------
def extract_local(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    teacher_factory: TeacherFactory | None = None,
) -> dict[str, Any]:
    """Extraction in this process (one shape part in memory at a time).

    → {new, skipped, rejected, units, parts, shapes_per_s, table}: ``new`` shapes got
    knowledge, ``rejected`` went to rejects, ``skipped`` were done before.
    """
    refs, skipped = _plan(storage, shapes_dir, knowledge_dir)
    writer = _PartWriter(storage, cfg.run, knowledge_dir)
    chunk = part_shapes(len(refs))
    start = time.perf_counter()
    teacher = (teacher_factory or _default_factory)(cfg.teacher, cfg.seed) if refs else None
    by_part: dict[str, list[ShapeRef]] = {}
    for ref in refs:
        by_part.setdefault(ref[0], []).append(ref)
    results: list[tuple[str, KnowledgeUnits | None, str]] = []
    with tqdm(total=len(refs), desc="extract", unit="shape", disable=not cfg.progress) as bar:
        for part_refs in by_part.values():  # one shape part in memory at a time
            for row in load_rows(storage, shapes_dir, part_refs):
                sid = row["shape_id"]
                try:
                    shape = row_to_shape(row)
                except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                    results.append((sid, None, f"render: {_reason(e)}"))
                else:
                    results.append(_extract_one(shape, cfg.render, teacher))
                bar.update(1)
                if len(results) >= chunk:
                    writer.write(results)
                    results = []
    writer.write(results)
    summary = _summary(writer.counts, skipped, writer.parts, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (local): %s", summary)
    return summary


def _extract_one(shape: Shape, render_cfg: RenderConfig, teacher: Teacher) -> tuple[str, KnowledgeUnits | None, str]:
    try:
        views = render(shape, render_cfg)
    except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
        return shape.shape_id, None, f"render: {_reason(e)}"
    try:
        return shape.shape_id, to_units(views, teach(teacher, views, shape), shape, teacher), ""
    except Exception as e:  # noqa: BLE001
        return shape.shape_id, None, f"teacher: {_reason(e)}"


def build_dataset(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    refs: list[ShapeRef],
    teacher_factory: TeacherFactory | None = None,
) -> Any:
    """The lazy Ray Dataset of per-shape unit rows (``SHAPE_UNITS_SCHEMA``) of ``refs``.

    The input is the list of unfinished shapes, not ``read_parquet`` of the table: each
    render task reads its shape's row itself (one part file of <= 32 shapes, ~3 ms), and
    one shape per block makes every shape its own task. Measured on 2 CPUs: read_parquet's
    file listing alone held a CPU for 1 s (warm) to 7 s (cold) before any render could
    start, and needed a repartition to split parts into per-shape tasks.
    """
    import ray.data

    items = [{"part": part, "shape_id": sid} for part, sid in refs]
    if extract_fused(cfg):
        import ray

        opts = fused_actor_options(cfg, ray.cluster_resources().get("CPU", 1.0))
        batch = fused_batch_shapes(len(items), opts.max_size)
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return ds.map_batches(
                ExtractStage,
                fn_constructor_kwargs={
                    "teacher_cfg": cfg.teacher,
                    "seed": cfg.seed,
                    "storage": storage,
                    "shapes_dir": shapes_dir,
                    "render_cfg": cfg.render,
                    "teacher_factory": teacher_factory,
                },
                batch_size=batch,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=opts.min_size, max_size=opts.max_size),
                num_cpus=opts.num_cpus,
                num_gpus=opts.num_gpus,
                **actor_fault_options(),
            )
    ds = ray.data.from_items(items, override_num_blocks=input_blocks(len(items)))
    ds = ds.map_batches(
        render_refs,
        fn_kwargs={"storage": storage, "shapes_dir": shapes_dir, "render_cfg": cfg.render},
        batch_size=RENDER_BATCH_SHAPES,
        batch_format="numpy",
        **render_resources(cfg),
    )
    teacher = teacher_actor_options(cfg)
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) deprecates extra remote args such as max_restarts in favour of
        # named ones, and has no named one for actor fault tolerance yet.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            TeachStage,
            fn_constructor_kwargs={"teacher_cfg": cfg.teacher, "seed": cfg.seed, "teacher_factory": teacher_factory},
            batch_size=teacher.batch_size,
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

    Streams: at most a few shapes' views are in flight per stage; the driver holds one
    part's units. Same return value as ``extract_local``.
    """
    refs, skipped = _plan(storage, shapes_dir, knowledge_dir)
    writer = _PartWriter(storage, cfg.run, knowledge_dir)
    start = time.perf_counter()
    if refs:
        configure_data_context(cfg.progress)
        ds = build_dataset(cfg, storage, shapes_dir, refs, teacher_factory)
        todo = [sid for _, sid in refs]
        pending = set(todo)
        for batch in ds.iter_batches(batch_size=part_shapes(len(todo)), batch_format="pyarrow"):
            results = []
            for row in batch.to_pylist():
                sid = row["shape_id"]
                if sid not in pending:  # defensive: a shape is written once per run
                    log.warning("extract: %s came back twice; the second copy is dropped", sid)
                    continue
                pending.discard(sid)
                results.append((sid, None, row["error"]) if row["error"] else (sid, row_to_units(row), ""))
            writer.write(results)
            log.info("extract: %d/%d shapes written", len(todo) - len(pending), len(todo))
        if pending:  # cannot happen unless rows were dropped; they stay undone for a re-run
            log.error("extract: %d shapes did not come back and stay undone: %s", len(pending), sorted(pending)[:10])
    summary = _summary(writer.counts, skipped, writer.parts, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (ray): %s", summary)
    return summary
