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

``extract_local`` runs ``PartExtractor`` over the parts in this process.

Both skip what is done (a part whose pieces finish all its shapes; within a part, the
shapes its pieces list), and send a shape whose render or teacher raises to
``{run}/rejects/`` (stage ``extract``) with its reason, marked done, while the rest go on.
The knowledge of a shape depends only on the config, the seed and the shape: both
drivers give identical units. A teacher actor that dies (a crash, an OOM kill, a lost
node) is restarted by Ray and its batch retried (``actor_fault_options``); a batch that
keeps killing its actor fails the run, which a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from cluster.config import Config
from cluster.extract_parts import (
    PIECE_SCHEMA,
    PartExtractor,
    Result,
    TeacherFactory,
    default_factory,
    done_in_part,
    write_piece,
)
from cluster.layout import shapes_manifest, unfinished_parts
from cluster.runtime import (
    RENDER_BATCH_SHAPES,
    configure_data_context,
    extract_fused,
    fused_actor_options,
    render_resources,
    teacher_actor_options,
)
from cluster.storage import Storage
from distill.config import RenderConfig, TeacherConfig
from distill.extract import render, teach, to_units
from distill.records import Shape, row_to_shape
from distill.views import Cameras, RenderedViews

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = -1
"""A dead teacher actor is always replaced (each replacement reloads the model)."""
ACTOR_MAX_TASK_RETRIES = 3
"""Attempts of one batch on replaced actors before the run fails: a batch that kills
every actor it meets is a poison pill, not bad luck."""


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


# -- split layout, stage 1: render (CPU tasks) ------------------------------------------
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


def render_part(
    batch: dict[str, np.ndarray], storage: Storage, shapes_dir: str, knowledge_dir: str, render_cfg: RenderConfig
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` generator of the render stage: one shape part in (``part``), each of
    its unfinished shapes rendered out as one batch (``render_rows``, plus ``part`` and
    ``category``), so a task holds one shape's views at a time (~60 MB at 800²)."""
    (part,) = [str(p) for p in batch["part"]]
    done = done_in_part(storage, knowledge_dir, part)
    table = storage.read_part(shapes_dir, part)
    for i in range(table.num_rows):
        row = table.slice(i, 1).to_pylist()[0]
        if str(row["shape_id"]) in done:
            continue
        out = render_rows([row], render_cfg)
        out["part"] = np.array([part], dtype=object)
        out["category"] = np.array([str(row.get("category"))], dtype=object)
        yield out


# -- split layout, stage 2: teacher + back-projection (actor pool) -----------------------
class TeachStage:
    """Ray Data callable class: the teacher, loaded once per actor; per batch of rendered
    shapes their predictions and back-projected units, written as knowledge pieces of the
    parts they came from → ``PIECE_SCHEMA`` rows."""

    def __init__(
        self,
        teacher_cfg: TeacherConfig,
        seed: int,
        storage: Storage,
        run: str,
        knowledge_dir: str,
        teacher_factory: TeacherFactory | None = None,
    ) -> None:
        self.teacher = (teacher_factory or default_factory)(teacher_cfg, seed)
        self.storage, self.run, self.knowledge_dir = storage, run, knowledge_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        by_part: dict[str, list[Result]] = {}
        for i in range(len(batch.get("shape_id", []))):
            sid, error, category = str(batch["shape_id"][i]), str(batch["error"][i]), str(batch["category"][i])
            result: Result = (sid, None, error, category)
            if not error:
                try:
                    views = columns_to_views({k: batch[k][i] for k in VIEW_COLUMNS + CAMERA_COLUMNS})
                    shape = _teacher_shape(str(batch["header"][i]), batch["points"][i])
                    preds = teach(self.teacher, views, shape)
                    result = (sid, to_units(views, preds, shape, self.teacher), "", category)
                except Exception as e:  # noqa: BLE001 - one shape's failure rejects that shape only
                    result = (sid, None, f"teacher: {_reason(e)}", category)
            by_part.setdefault(str(batch["part"][i]), []).append(result)
        rows = [write_piece(self.storage, self.run, self.knowledge_dir, part, res) for part, res in by_part.items()]
        return pa.Table.from_pylist([r for r in rows if r is not None], schema=PIECE_SCHEMA)


# -- fused layout ------------------------------------------------------------------------
class ExtractStage:
    """Ray Data callable class of the fused layout: per shape part, ``PartExtractor`` (read,
    render, teach, back-project, write) in this actor; the teacher is loaded once."""

    def __init__(
        self,
        teacher_cfg: TeacherConfig,
        seed: int,
        storage: Storage,
        run: str,
        shapes_dir: str,
        knowledge_dir: str,
        render_cfg: RenderConfig,
        teacher_factory: TeacherFactory | None = None,
    ) -> None:
        teacher = (teacher_factory or default_factory)(teacher_cfg, seed)
        self.extract = PartExtractor(storage, run, shapes_dir, knowledge_dir, render_cfg, teacher)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [row for part in batch["part"] for row in self.extract(str(part))]
        return pa.Table.from_pylist(rows, schema=PIECE_SCHEMA)


# -- the two drivers ---------------------------------------------------------------------
def plan(storage: Storage, shapes_dir: str, knowledge_dir: str) -> tuple[list[str], int]:
    """(the unfinished shape parts, the table's shapes) from the manifests."""
    shapes = shapes_manifest(storage, shapes_dir)
    todo = unfinished_parts(shapes, storage.manifest(knowledge_dir))
    return todo, sum(int(s.get("shapes", 0)) for s in shapes.values())


def _summary(
    rows: list[dict[str, Any]], total: int, seconds: float, storage: Storage, knowledge_dir: str
) -> dict[str, Any]:
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


def extract_local(
    cfg: Config,
    storage: Storage,
    shapes_dir: str,
    knowledge_dir: str,
    teacher_factory: TeacherFactory | None = None,
) -> dict[str, Any]:
    """Extraction in this process (one shape part in memory at a time).

    → {new, skipped, rejected, units, parts, shapes_per_s, table}: ``new`` shapes got
    knowledge, ``rejected`` went to rejects, ``skipped`` were done before, ``parts`` is
    the number of knowledge pieces written.
    """
    todo, total = plan(storage, shapes_dir, knowledge_dir)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo:
        teacher = (teacher_factory or default_factory)(cfg.teacher, cfg.seed)
        manifest = shapes_manifest(storage, shapes_dir)
        total = sum(int(manifest[p].get("shapes", 0)) for p in todo)
        with tqdm(total=total, desc="extract", unit="shape", disable=not cfg.progress) as bar:
            extract = PartExtractor(
                storage, cfg.run, shapes_dir, knowledge_dir, cfg.render, teacher, on_shape=lambda: bar.update(1)
            )
            for part in todo:
                rows += extract(part)
    summary = _summary(rows, total, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (local): %s", summary)
    return summary


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
    if extract_fused(cfg):
        opts = fused_actor_options(cfg, ray.cluster_resources().get("CPU", 1.0))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return ds.map_batches(
                ExtractStage,
                fn_constructor_kwargs={
                    "teacher_cfg": cfg.teacher,
                    "seed": cfg.seed,
                    "storage": storage,
                    "run": cfg.run,
                    "shapes_dir": shapes_dir,
                    "knowledge_dir": knowledge_dir,
                    "render_cfg": cfg.render,
                    "teacher_factory": teacher_factory,
                },
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
        fn_kwargs={"storage": storage, "shapes_dir": shapes_dir, "knowledge_dir": knowledge_dir, "render_cfg": cfg.render},
        batch_size=1,
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
            fn_constructor_kwargs={
                "teacher_cfg": cfg.teacher,
                "seed": cfg.seed,
                "storage": storage,
                "run": cfg.run,
                "knowledge_dir": knowledge_dir,
                "teacher_factory": teacher_factory,
            },
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
    summary = _summary(rows, total, time.perf_counter() - start, storage, knowledge_dir)
    log.info("extract (ray): %s", summary)
    return summary
