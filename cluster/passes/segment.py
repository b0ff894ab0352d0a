"""Segmenting new shapes: trained students + any shapes → labels, coloured PLYs, pictures.

Outputs under ``{run}/segment/``: ``shapes/`` (the ingested shapes), ``labels/`` (a
predictions table, ``distill.records.PREDICTION_SCHEMA``, with the points themselves so
the labels can be used without the shape table), ``ply/<name>.ply`` (points coloured by part, with a
``label`` property) and ``png/<name>.png`` (several views coloured by predicted part with
a legend; a ground-truth row below when the shape has labels). A shape of a category no
student knows goes to ``rejects/`` with the categories that are known.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.config import Config, config_from_dict, to_dict
from cluster.passes.runner import Pass, Step, run_pass
from cluster.pipeline import ensure_shapes
from cluster.runtime.resources import Pool
from cluster.store.layout import shapes_manifest
from cluster.store.paths import RunPaths
from cluster.store.rejects import write_rejects
from cluster.store.storage import Storage
from cluster.training.checkpoints import list_students
from cluster.training.students import load_students, pooled, student_predictions, trained_categories
from distill.errors import NotFoundError
from distill.metrics import MIoUSums
from distill.records import Prediction, predictions_to_table, row_to_shape
from distill.visualize import colored_ply, png_bytes, segmentation_figure

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [("part", pa.string()), ("segmented", pa.int64()), ("rejected", pa.int64()), ("pictures", pa.int64()),
     ("sums", pa.string())]
)  # fmt: skip
"""What a segmenting worker hands the driver: one row per shape part, its mIoU sums as JSON."""


def file_name(shape_id: str) -> str:
    """A shape id as a flat, portable file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", shape_id).strip("_")


class SegmentStage:
    """The segmentation pass's step: the students loaded once (per actor on Ray); per shape
    part, its labels part, PLYs and up to the item's ``pictures`` PNGs written, and shapes
    of a category no student knows rejected."""

    def __init__(self, config: dict[str, Any], storage: Storage, shapes_dir: str, source_run: str) -> None:
        self.cfg = cfg = config_from_dict(config)
        self.storage = storage
        self.shapes_dir, self.out = shapes_dir, RunPaths(cfg.run).segment()
        self.students = load_students(self.storage, source_run)
        self.known = sorted(trained_categories(self.students))
        # A user's files name their category freely ("chair", "CHAIR"): match case-insensitively.
        self.canonical = {c.lower(): c for c in self.known}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self.segment(str(part), int(pics)) for part, pics in zip(batch["part"], batch["pictures"])]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def segment(self, part: str, pictures: int) -> dict[str, Any]:
        cfg, storage, out = self.cfg, self.storage, self.out
        shapes = [row_to_shape(r) for r in storage.read_part(self.shapes_dir, part).to_pylist()]
        for s in shapes:
            s.category = self.canonical.get(s.category.lower(), s.category)
        unknown = [s for s in shapes if s.category not in self.known]
        table = MIoUSums()
        preds: list[Prediction] = []
        drawn = 0
        for name, s, pred in student_predictions(self.students, shapes, cfg.train.batch_size, pooled(cfg)):
            preds.append(Prediction(s.shape_id, s.category, name, pred, s.points))
            storage.write_bytes(f"{out}/ply/{file_name(s.shape_id)}.ply", colored_ply(s.points, pred))
            if s.labels is not None:
                table.add(s.shape_id, s.category, pred, s.labels, s.num_parts)
            if drawn < pictures:
                title = f"{s.shape_id} ({s.category}), student {name}"
                fig = segmentation_figure(s.points, pred, s.part_names, s.labels, title, cfg.segment.picture_size)
                storage.write_bytes(f"{out}/png/{file_name(s.shape_id)}.png", png_bytes(fig))
                drawn += 1
        known = ", ".join(self.known)
        write_rejects(
            storage,
            cfg.run,
            "segment",
            [(s.shape_id, f"no student for category {s.category!r}; trained: {known}") for s in unknown],
        )
        done = [p.shape_id for p in preds]
        storage.write_part(f"{out}/labels", predictions_to_table(preds), done_ids=done, name=part)
        sums = json.dumps(table.sums)
        return {"part": part, "segmented": len(preds), "rejected": len(unknown), "pictures": drawn, "sums": sums}


def segment(cfg: Config, storage: Storage) -> dict[str, Any]:
    out = RunPaths(cfg.run).segment()
    shapes_dir = cfg.data.path if cfg.data.source == "table" else f"{out}/shapes"
    source_run = cfg.segment.students_from or cfg.run
    if not list_students(storage, source_run):  # before ingesting the shapes
        raise NotFoundError(
            f"{storage.uri(source_run, 'checkpoints')}: no trained student — train one (jobs/pretrain.py) "
            "or point segment.students_from at a run that has one"
        )
    ingested = ensure_shapes(cfg, storage, cfg.data, shapes_dir)
    manifest = shapes_manifest(storage, shapes_dir)
    written = set(storage.list_parts(f"{out}/labels"))  # one labels part per shape part: a re-run skips it
    items, left = [], cfg.segment.pictures
    for part in sorted(manifest):
        pictures = 0 if part in written else min(left, int(manifest[part].get("shapes", 0)))
        left -= pictures
        items.append({"part": part, "pictures": pictures})
    kwargs = {"config": to_dict(cfg), "storage": storage, "shapes_dir": shapes_dir, "source_run": source_run}
    segmented = Pass(
        "segment",
        (Step(SegmentStage, kwargs, Pool(size=cfg.cluster.eval_actors)),),
        finished=lambda r: r["part"] in written,
    )
    rows = run_pass(cfg, segmented, items).rows
    table = MIoUSums()
    for r in rows:
        table.merge(MIoUSums(json.loads(r["sums"])))
    summary: dict[str, Any] = {
        "segmented": sum(int(r["segmented"]) for r in rows),
        "skipped": sum(int(manifest[p].get("shapes", 0)) for p in written if p in manifest),
        "rejected": sum(int(r["rejected"]) for r in rows),
        "pictures": sum(int(r["pictures"]) for r in rows),
        "labels": storage.uri(out, "labels"),
        "ply": storage.uri(out, "ply"),
        "png": storage.uri(out, "png"),
        "ingest": ingested,
    }
    if len(table):
        summary["miou"] = table.summary()
    return summary
