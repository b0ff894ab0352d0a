"""The streaming data path's guard: a whole run (ingest → extract → train with one
backward-distillation round → evaluate) over a corpus of many small parts never has the
driver read a table whole.

* Local backend: the driver is the worker, so it reads every part; but one part at a
  time: no single read returns more rows than the largest part of its table.
* Ray backend (a fresh interpreter, as users run it): the workers read the parts; the
  driver plans from manifests and reads at most a part's worth of rows of any table
  (in practice none).

``MaxReads`` (a ``ReadCounter`` that also keeps the largest single read per table) is
installed on the run's ``Storage``.
"""

import json

import pytest

from cluster.config import load_config
from cluster.pipeline import pretrain
from cluster.store.storage import ReadCounter, Storage
from tests.conftest import run_fresh

PART = 4
ARGS = [
    "--config",
    "smoke",
    f"cluster.part_shapes={PART}",
    "data.per_category=6",  # 3 categories × (4 + 2): 6 shape parts
    "eval.data.per_category=3",  # 3 evaluated shape parts
    "render.image_size=64",
    "data.num_points=512",
    "eval.data.num_points=512",
    "train.epochs=2",
    "train.bd_rounds=1",
    "train.bd_epoch=1",
    "progress=false",
]
SHAPE_DIRS = ("reads/shapes", "reads/eval/shapes")


class MaxReads(ReadCounter):
    """Rows read per table folder, and the most rows any single read returned."""

    def __init__(self) -> None:
        super().__init__()
        self.max_rows: dict[str, int] = {}

    def record(self, table_dir: str, rows: int) -> None:
        super().record(table_dir, rows)
        self.max_rows[table_dir] = max(self.max_rows.get(table_dir, 0), rows)


# The Ray run's driver: the same pipeline in a fresh interpreter; its last line is JSON.
DRIVER = """
import json, sys
from cluster.pipeline import pretrain
from cluster.store.storage import Storage
from cluster.config import load_config
from tests.cluster.test_driver_reads import MaxReads

cfg = load_config(sys.argv[1:])
storage = Storage.from_config(cfg.storage)
storage.reads = MaxReads()
summary = pretrain(cfg, storage)
keep = {k: summary.get(k) for k in ("voting", "voting_nearest", "student", "evaluated_shapes")}
keep["students"] = summary["train"]["students"]
print(json.dumps({"rows": storage.reads.rows, "max_rows": storage.reads.max_rows, "summary": keep}, default=str))
"""


def _largest_part(storage: Storage, table_dir: str) -> int:
    """Rows of the largest part of a table folder (from the files themselves)."""
    return max(storage.read_part(table_dir, p).num_rows for p in storage.list_parts(table_dir))


def _check_layout(storage: Storage) -> None:
    """The corpus is many small parts: shape parts of at most PART shapes, one category each."""
    for table_dir, shapes, parts in zip(SHAPE_DIRS, (18, 9), (6, 3)):
        manifest = storage.manifest(table_dir)
        assert len(manifest) == parts and sum(m["shapes"] for m in manifest.values()) == shapes
        assert all(m["shapes"] <= PART and len(m["categories"]) == 1 for m in manifest.values())


def _config(root, backend):
    return load_config([*ARGS, f"storage.root={root}", "run=reads", f"cluster.backend={backend}"])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    cfg = _config(root, "local")
    storage = Storage.from_config(cfg.storage)
    storage.reads = MaxReads()
    summary = pretrain(cfg, storage)
    return root, storage.reads, summary


def test_local_run_reads_one_part_at_a_time(local_run):
    root, reads, summary = local_run
    (student,) = summary["train"]["students"]
    assert student["epochs"] == 2 and student["rounds"] == 1
    assert summary["evaluated_shapes"] == 9
    check = Storage(str(root))
    _check_layout(check)
    # Every table the run reads, read part by part: shapes (rows: shapes), round 0's
    # knowledge (rows: units), round 1's scores (rows: shapes).
    tables = {
        *SHAPE_DIRS,
        "reads/knowledge/round_0",
        "reads/eval/knowledge/round_0",
        "reads/knowledge/round_1/all",
    }
    assert tables <= set(reads.rows), reads.rows
    for table_dir, most in reads.max_rows.items():
        largest = _largest_part(check, table_dir)
        assert most <= largest, f"{table_dir}: one read of {most} rows, its largest part has {largest}"
        total = sum(check.read_part(table_dir, p).num_rows for p in check.list_parts(table_dir))
        assert total > largest, f"{table_dir} is one part: the guard would not see a whole-table read"
    for table_dir in (*SHAPE_DIRS, "reads/knowledge/round_1/all"):
        assert reads.max_rows[table_dir] <= PART


@pytest.mark.slow
def test_ray_run_driver_reads_at_most_a_part(local_run, tmp_path):
    argv = [*ARGS, f"storage.root={tmp_path}", "run=reads", "cluster.backend=ray", "cluster.num_cpus=2"]
    run = run_fresh(["-c", DRIVER, *argv], timeout=900)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for table_dir, rows in out["rows"].items():
        assert rows <= PART, f"the driver read {rows} rows of {table_dir}: {out['rows']}"
    (student,) = out["summary"]["students"]
    assert student["epochs"] == 2 and student["rounds"] == 1
    assert out["summary"]["evaluated_shapes"] == 9
    storage = Storage(str(tmp_path))
    _check_layout(storage)
    assert len(storage.list_parts("reads/knowledge/round_1/all")) == len(storage.list_parts("reads/knowledge/round_0"))
    # Same knowledge as the local run: the voting baselines agree exactly.
    _, _, local = local_run
    for key in ("voting", "voting_nearest"):
        assert out["summary"][key] == local[key], key
