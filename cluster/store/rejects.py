"""``{run}/rejects/``: items a stage could not use, each with the reason. Never silent."""

from __future__ import annotations

import logging

import pyarrow as pa

from cluster.store.paths import RunPaths
from cluster.store.storage import Storage
from distill.records import REJECT_SCHEMA

log = logging.getLogger(__name__)


def write_rejects(storage: Storage, run: str, stage: str, rejects: list[tuple[str, str]]) -> None:
    """Append ``(item, reason)`` pairs of ``stage`` as one part of the rejects table."""
    if not rejects:
        return
    for item, reason in rejects:
        log.warning("%s: rejected %s: %s", stage, item, reason)
    table = pa.table(
        {"item": [i for i, _ in rejects], "stage": [stage] * len(rejects), "reason": [r for _, r in rejects]},
        schema=REJECT_SCHEMA,
    )
    storage.write_part(RunPaths(run).rejects, table, done_ids=[])


def read_rejects(storage: Storage, run: str, stage: str | None = None) -> list[dict[str, str]]:
    """The rejects of a run (of one stage when given), one dict per item, deduplicated."""
    table = storage.read_table(RunPaths(run).rejects, schema=REJECT_SCHEMA)
    rows = {(r["item"], r["stage"]): r for r in table.to_pylist() if stage is None or r["stage"] == stage}
    return list(rows.values())
