"""The runner's pure pieces (no Ray): pool sizes, batches as Ray Data builds them, and a
pass run in this process (chained steps, skipped items, one batch per step at a time)."""

import numpy as np
import pyarrow as pa
import pytest

from cluster.config import load_config
from cluster.passes.runner import Pass, Step, output_rows, pool_size, rows_to_batch, run_pass
from cluster.runtime.resources import Pool


def test_pool_size_fixed_grown_and_never_above_the_items():
    assert pool_size(Pool(size=4), 10, 16.0) == {"size": 4}
    assert pool_size(Pool(size=4), 2, 16.0) == {"size": 2}
    assert pool_size(Pool(size=0), 10, 8.0) == {"size": 4}  # one per two CPUs
    assert pool_size(Pool(size=1, grow=True), 10, 6.0) == {"min_size": 1, "max_size": 6}
    assert pool_size(Pool(size=1, num_cpus=2.0, grow=True), 10, 6.0) == {"min_size": 1, "max_size": 3}
    assert pool_size(Pool(size=8, grow=True), 3, 2.0) == {"min_size": 2, "max_size": 3}
    with pytest.raises(ValueError, match="batch_size"):
        Pool(batch_size=0)


def test_rows_to_batch_and_back():
    rows = [{"part": "a", "n": 1, "x": np.zeros(3)}, {"part": "b", "n": 2, "x": np.ones(3)}]
    batch = rows_to_batch(rows)
    assert batch["part"].dtype == object and batch["n"].tolist() == [1, 2] and batch["x"].shape == (2, 3)
    ragged = rows_to_batch([{"x": np.zeros(2)}, {"x": np.zeros(3)}])["x"]
    assert ragged.dtype == object and [len(v) for v in ragged] == [2, 3]
    table = pa.table({"k": [1, 2]})
    assert list(output_rows(table)) == [{"k": 1}, {"k": 2}]
    assert list(output_rows({"k": np.array([3])})) == [{"k": 3}]
    assert list(output_rows(iter([table, {"k": np.array([3])}]))) == [{"k": 1}, {"k": 2}, {"k": 3}]


class Doubler:
    """An actor step: built once, it counts its calls."""

    built = 0

    def __init__(self, factor: int) -> None:
        Doubler.built += 1
        self.factor = factor

    def __call__(self, batch):
        return {"v": batch["v"] * self.factor, "size": np.full(len(batch["v"]), len(batch["v"]))}


def split(batch, copies: int):
    """A task step that yields one batch per copy."""
    for _ in range(copies):
        yield {"v": batch["v"]}


def test_a_pass_here_chains_its_steps_in_their_batch_sizes_and_skips_finished_items():
    cfg = load_config(["cluster.backend=local", "progress=false"])
    steps = (
        Step(split, {"copies": 2}, Pool(batch_size=1, tasks=True)),
        Step(Doubler, {"factor": 10}, Pool(batch_size=3)),
    )
    p = Pass("test", steps, finished=lambda row: row["v"] == 2)
    Doubler.built = 0
    result = run_pass(cfg, p, ({"v": v} for v in range(4)))
    assert (result.items, result.skipped, Doubler.built) == (3, 1, 1)
    assert [r["v"] for r in result.rows] == [0, 0, 10, 10, 30, 30]
    assert [r["size"] for r in result.rows] == [3, 3, 3, 3, 3, 3]
    Doubler.built = 0
    assert run_pass(cfg, Pass("none", steps, finished=lambda row: True), [{"v": 1}]).rows == []
    assert Doubler.built == 0  # nothing to do: no model loaded
