"""The generation stage's workers: make, filter and write shapes where they are made.

procedural
    ``procedural_batch``: a plain CPU task per block of plan rows: make, filter, write.
shap_e
    ``ShapEStage``: a pool of actors (the pipeline loaded once per actor) runs the batched
    diffusion and the SDF lattice on the GPU; ``finish_shap_e_batch`` CPU tasks then run
    marching cubes, the filters and point sampling, and write — so the GPU never waits on
    CPU work.

Each part is written by the task that finished its shapes (``write_results``), named by
a hash of its ids (``part_name``): a task that Ray retries rewrites the same part with
the same content. Only ``GENERATE_RESULT_SCHEMA`` rows (ids and reasons) go back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.store.layout import part_name, shape_summary
from cluster.store.rejects import write_rejects
from cluster.store.storage import Storage
from distill.records import GENERATE_RESULT_SCHEMA, Shape, shapes_to_table
from distill.sampling import derive_seed
from distill.superpoints import attach_superpoints
from generation.config import GenerationConfig
from generation.filters import check_mesh, check_shape

log = logging.getLogger(__name__)

STAGE = "generate"


# -- writing (in whichever process finished the shapes) --------------------------------
def write_results(
    storage: Storage, run: str, table_dir: str, ids: list[str], shapes: list[Shape], rejects: list[tuple[str, str]]
) -> pa.Table:
    """Write the rejects, then one part with ``shapes`` whose done ids are all ``ids``
    (written and rejected) → ``GENERATE_RESULT_SCHEMA`` rows, one per id."""
    if not ids:
        return GENERATE_RESULT_SCHEMA.empty_table()
    # Rejects first: a crash between the two writes redoes (and re-rejects) the shapes
    # rather than marking them done without their reasons.
    write_rejects(storage, run, STAGE, rejects)
    attach_superpoints(shapes)
    name = storage.write_part(
        table_dir, shapes_to_table(shapes), done_ids=ids, name=part_name(ids), summary=shape_summary(shapes)
    )
    errors = dict(rejects)
    return pa.table(
        {"shape_id": ids, "error": [errors.get(i, "") for i in ids], "part": [name] * len(ids)},
        schema=GENERATE_RESULT_SCHEMA,
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


def batch_rows(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """A numpy batch → its rows (dicts of ``columns``)."""
    n = len(batch["shape_id"])
    return [{k: batch[k][i] for k in columns} for i in range(n)]


ROW_COLUMNS = ("shape_id", "category", "index", "prompt", "seed")
"""A plan row as batch columns."""
SDF_COLUMNS = (*ROW_COLUMNS, "sdf", "error", "model")
"""A plan row with its SDF lattice, as ``ShapEStage`` hands it on."""


def procedural_batch(
    batch: dict[str, np.ndarray], storage: Storage, run: str, table_dir: str, num_points: int, check: bool
) -> pa.Table:
    """``map_batches`` function: one block of plan rows → its part written → result rows."""
    rows = batch_rows(batch, ROW_COLUMNS)
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
    rows = batch_rows(batch, SDF_COLUMNS)
    shapes, rejects = shap_e_rows(rows, parts, gen, run_seed, num_points)
    return write_results(storage, run, table_dir, [str(r["shape_id"]) for r in rows], shapes, rejects)
