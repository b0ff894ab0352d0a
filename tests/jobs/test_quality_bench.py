"""bench/quality.py's bar: the best teacher-only row, each student row's lead over it and
the interval over shapes, on runs made up here (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality import aggregate, by_category

SHAPES = {f"{c}{i}": c for c in ("A", "B") for i in range(4)}


def run(scores: dict[str, float | list[float]]) -> dict:
    """One run: per method a per-shape score (a constant, or one per shape in SHAPES order)."""
    out: dict = {"category": SHAPES}
    for m, v in scores.items():
        per_shape = dict(zip(SHAPES, np.broadcast_to(np.asarray(v, float), len(SHAPES)).tolist()))
        out[m] = {"per_shape": per_shape, "per_category": by_category(per_shape, SHAPES), "seconds": 1.0}
    return out


def test_the_bar_is_the_best_teacher_row_and_leads_are_measured_from_it():
    base = {"voting": 40.0, "voting_nearest": 44.0, "voting_views": 46.0}
    runs = [
        run({**base, "voting_superpoints": [50.0] * 4 + [46.0] * 4, "student": 55.0, "student_units": 60.0}),
        run({**base, "voting_superpoints": [50.0] * 4 + [46.0] * 4, "student": 57.0, "student_units": 60.0}),
    ]
    agg = aggregate(runs)
    assert agg["best_teacher"] == {"name": "voting_superpoints", "mean": 48.0}
    assert agg["lead_best"] == {"student": 8.0, "student_units": 12.0}
    assert agg["lead_best_std"]["student"] == pytest.approx(1.0)
    # The lead over shapes, averaged over runs: A +6 (56 − 50), B +10: no spread within a
    # category, so every resample gives the category mean, +8.
    assert agg["lead_ci95"]["student"] == [8.0, 8.0]
    # The old lead over voting_nearest is still reported beside it.
    assert agg["lead"] == pytest.approx(12.0)
    assert agg["below_best_5"]["student"] == []


def test_the_interval_widens_with_disagreement_between_shapes():
    base = {"voting": 40.0, "voting_nearest": 44.0, "voting_views": 46.0, "voting_superpoints": 45.0}
    spread = [40.0, 60.0, 42.0, 58.0, 30.0, 70.0, 35.0, 65.0]
    agg = aggregate([run({**base, "student": spread, "student_units": 50.0})])
    lo, hi = agg["lead_ci95"]["student"]
    assert lo < agg["lead_best"]["student"] < hi and hi - lo > 5
    assert agg["best_teacher"]["name"] == "voting_views"
