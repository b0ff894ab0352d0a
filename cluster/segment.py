"""Segmenting new shapes: trained students + any shapes → labels, coloured PLYs, pictures.

Outputs under ``{run}/segment/``: ``shapes/`` (the ingested shapes), ``labels/`` (a
predictions table, ``distill.records.PREDICTION_SCHEMA``, with the points themselves so
the labels can be used without the shape table), ``ply/<name>.ply`` (points coloured by part, with a
``label`` property) and ``png/<name>.png`` (several views coloured by predicted part with
a legend; a ground-truth row below when the shape has labels). A shape of a category no
student knows goes to ``rejects/`` with the categories that are known.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tqdm import tqdm

from cluster.checkpoints import list_students
from cluster.config import Config
from cluster.evaluate import load_students, pooled, student_predictions, trained_categories
from cluster.layout import shapes_manifest
from cluster.pipeline import ensure_shapes
from cluster.rejects import write_rejects
from cluster.storage import Storage
from distill.errors import NotFoundError
from distill.metrics import MIoUSums
from distill.records import Prediction, Shape, predictions_to_table, row_to_shape
from distill.visualize import colored_ply, png_bytes, segmentation_figure

log = logging.getLogger(__name__)


def file_name(shape_id: str) -> str:
    """A shape id as a flat, portable file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", shape_id).strip("_")


def segment(cfg: Config, storage: Storage) -> dict[str, Any]:
    out = f"{cfg.run}/segment"
    shapes_dir = cfg.data.path if cfg.data.source == "table" else f"{out}/shapes"
    source_run = cfg.segment.students_from or cfg.run
    if not list_students(storage, source_run):  # before ingesting the shapes
        raise NotFoundError(
            f"{storage.uri(source_run, 'checkpoints')}: no trained student — train one (jobs/pretrain.py) "
            "or point segment.students_from at a run that has one"
        )
    ingested = ensure_shapes(cfg, storage, cfg.data, shapes_dir)
    loaded = load_students(storage, source_run)
    known = sorted(trained_categories(loaded))
    # A user's files name their category freely ("chair", "CHAIR"): match case-insensitively.
    canonical = {c.lower(): c for c in known}
    table = MIoUSums()
    pictures = segmented = skipped = 0
    unknown: list[Shape] = []
    written = set(storage.list_parts(f"{out}/labels"))
    manifest = shapes_manifest(storage, shapes_dir)
    for part in tqdm(sorted(manifest), desc="segment", unit="part", disable=not cfg.progress):
        if part in written:  # one labels part per shape part: a re-run skips finished parts
            skipped += int(manifest[part].get("shapes", 0))
            continue
        shapes = [row_to_shape(r) for r in storage.read_part(shapes_dir, part).to_pylist()]
        for s in shapes:
            s.category = canonical.get(s.category.lower(), s.category)
        unknown += [s for s in shapes if s.category not in known]
        preds: list[Prediction] = []
        for name, s, pred in student_predictions(loaded, shapes, cfg.train.batch_size, pooled(cfg)):
            preds.append(Prediction(s.shape_id, s.category, name, pred, s.points))
            storage.write_bytes(f"{out}/ply/{file_name(s.shape_id)}.ply", colored_ply(s.points, pred))
            if s.labels is not None:
                table.add(s.shape_id, s.category, pred, s.labels, s.num_parts)
            if pictures < cfg.segment.pictures:
                title = f"{s.shape_id} ({s.category}), student {name}"
                fig = segmentation_figure(s.points, pred, s.part_names, s.labels, title, cfg.segment.picture_size)
                storage.write_bytes(f"{out}/png/{file_name(s.shape_id)}.png", png_bytes(fig))
                pictures += 1
        segmented += len(preds)
        done = [p.shape_id for p in preds]
        storage.write_part(f"{out}/labels", predictions_to_table(preds), done_ids=done, name=part)
    write_rejects(
        storage,
        cfg.run,
        "segment",
        [(s.shape_id, f"no student for category {s.category!r}; trained: {', '.join(sorted(known))}") for s in unknown],
    )
    summary: dict[str, Any] = {
        "segmented": segmented,
        "skipped": skipped,
        "rejected": len(unknown),
        "pictures": pictures,
        "labels": storage.uri(out, "labels"),
        "ply": storage.uri(out, "ply"),
        "png": storage.uri(out, "png"),
        "ingest": ingested,
    }
    if len(table):
        summary["miou"] = table.summary()
    return summary
