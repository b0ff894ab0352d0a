"""The end-to-end scale benchmark's own parts: its corrupt inputs are corrupt, and its stage
table counts a killed stage until the kill (bench/scale_e2e.py)."""

import pytest

from bench.scale_e2e import CORRUPT_KINDS, stage_table, write_corrupt_files
from distill.readers.files import load_any_file
from distill.records import ShapeError


def test_every_corrupt_input_is_rejected_by_the_files_reader_with_its_reason(tmp_path):
    paths = write_corrupt_files(tmp_path, 2 * len(CORRUPT_KINDS))
    assert len(paths) == 2 * len(CORRUPT_KINDS)
    for path in paths:
        with pytest.raises(ShapeError, match=".+") as caught:
            load_any_file(path, "files/x", "chair", None, 512, 0)
        assert str(caught.value).strip(), path


def test_stage_table_counts_a_killed_stage_until_the_kill():
    events = [
        ("ingest", "started", 0.0), ("ingest", "done", 10.0),
        ("extract", "started", 10.0),  # killed at 30
        ("ingest", "started", 40.0), ("ingest", "done", 41.0),
        ("extract", "started", 41.0), ("extract", "done", 61.0),
    ]  # fmt: skip
    rows = [(t, 100 * 2**20 + t * 2**20, 0, "", 0, 0.0) for t in range(0, 62)]
    table = stage_table(events, rows, {"extract": 30.0}, shapes=1000)
    assert table["ingest"]["seconds"] == 11.0
    assert table["extract"]["seconds"] == 40.0  # 20 before the kill, 20 after
    assert table["extract"]["ms_per_shape"] == 40.0
    assert table["extract"]["driver_peak_mib"] == 161.0
    assert table["train"]["seconds"] == 0.0
