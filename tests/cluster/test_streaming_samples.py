"""Training data streamed from parts: plans from manifests, bounded reads, exact epochs."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.config import load_config
from cluster.store.layout import knowledge_part_name, shape_summary
from cluster.store.storage import Storage
from cluster.training.samples import PartSource, Tables, samples_to_table, table_to_samples
from cluster.training.students import StudentPlan, plan_students
from cluster.training.train_ray import concurrent_students
from distill.metrics import MIoUSums, MIoUTable
from distill.records import KnowledgeUnits, Shape, scores_to_table, shapes_to_table, units_to_table
from distill.sources import in_validation

PARTS = {"Mug": ["body", "handle"], "Lamp": ["base", "pole", "shade"]}


def _write(storage: Storage, run: str, per_part: int = 5, parts_per_category: int = 3) -> list[str]:
    """Shape parts (one category each) and their co-partitioned knowledge; → shape ids."""
    rng = np.random.default_rng(0)
    ids = []
    for c, (cat, names) in enumerate(PARTS.items()):
        for p in range(parts_per_category):
            shapes, units = [], []
            for i in range(per_part):
                sid = f"{cat}/{p}-{i}"
                labels = rng.integers(0, len(names), 64)
                shapes.append(Shape(sid, cat, names, rng.normal(size=(64, 3)) * 0.3, labels=labels))
                if i == 0:  # one shape a part without units: never trained on
                    continue
                sets = [np.flatnonzero(labels == k) for k in range(len(names))]
                units.append(
                    KnowledgeUnits.from_lists(sid, [0] * len(names), list(range(len(names))), [0.9] * len(names), sets)
                )
            name = f"part-{c}{p}.parquet"
            done = [s.shape_id for s in shapes]
            storage.write_part(f"{run}/shapes", shapes_to_table(shapes), done, name, shape_summary(shapes))
            with_units = {cat: len(units)}
            storage.write_part(
                f"{run}/knowledge/round_0",
                units_to_table(units),
                done,
                knowledge_part_name(name, done),
                {"shape_part": name, "with_units": with_units, "units": sum(len(u) for u in units)},
            )
            ids += done
    return ids


@pytest.fixture()
def run(tmp_path):
    storage = Storage(str(tmp_path))
    ids = _write(storage, "r")
    return storage, ids


def _plans(storage: Storage, per_category: bool) -> list[StudentPlan]:
    cfg = load_config([f"train.per_category={str(per_category).lower()}", f"storage.root={storage.root_uri}"])
    return plan_students(cfg, storage, "r/shapes", "r/knowledge/round_0")


def test_students_are_planned_from_the_manifests_alone(run):
    storage, _ = run
    storage.reads.reset()
    (one,) = _plans(storage, per_category=False)
    assert storage.reads.rows == {}  # no row of either table was read
    assert one.space.categories == ("Lamp", "Mug") and one.with_units == 2 * 3 * 4
    by_cat = _plans(storage, per_category=True)
    assert [p.name for p in by_cat] == ["Lamp", "Mug"]
    assert all(len(p.items) == 3 for p in by_cat)  # each reads only its own category's parts
    assert StudentPlan.from_dict(by_cat[0].to_dict()) == by_cat[0]


def test_an_epoch_streams_every_training_shape_once_a_part_at_a_time(run):
    storage, ids = run
    (plan,) = _plans(storage, per_category=False)
    source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, batch_size=4, seed=1, shuffle_samples=8)
    storage.reads.reset()
    seen = [sid for b in source.train_batches(0, {}) for sid in b.shape_ids]
    expected = {sid for sid in ids if not sid.endswith("-0")}  # shapes with units
    assert sorted(seen) == sorted(expected)
    # each part read once: 6 shape parts of 5 rows, and every unit once (4 shapes × 2 or 3 units a part)
    assert storage.reads.rows == {"r/shapes": 30, "r/knowledge/round_0": 3 * 4 * 2 + 3 * 4 * 3}
    again = [sid for b in source.train_batches(1, {}) for sid in b.shape_ids]
    assert again != seen and sorted(again) == sorted(seen)  # a new order each epoch
    assert [sid for b in source.train_batches(0, {}) for sid in b.shape_ids] == seen  # seeded


def test_validation_is_a_stable_hash_split(run):
    storage, ids = run
    (plan,) = _plans(storage, per_category=False)
    source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=3, val_fraction=0.3)
    val = {s.shape_id for chunk in source.validation_chunks() for s in chunk}
    train = {sid for b in source.train_batches(0, {}) for sid in b.shape_ids}
    assert val and train and not val & train
    assert val == {sid for sid in ids if not sid.endswith("-0") and in_validation(sid, 3, 0.3)}
    share = np.mean([in_validation(f"shape-{i}", 0, 0.2) for i in range(4000)])
    assert 0.18 < share < 0.22
    assert len(source.calibration_samples()) <= 64


def test_sample_rows_roundtrip_exactly(run):
    storage, _ = run
    (plan,) = _plans(storage, per_category=False)
    source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=0)
    (chunk, *_) = list(source.scan())
    back = table_to_samples(samples_to_table(chunk))
    for a, b in zip(chunk, back):
        assert a.shape_id == b.shape_id and a.category == b.category
        for key in ("points", "point_idx", "unit_offsets", "unit_slot", "unit_score"):
            assert np.array_equal(getattr(a, key).numpy(), getattr(b, key).numpy()), key


def test_missing_knowledge_names_the_part(tmp_path):
    storage = Storage(str(tmp_path))
    _write(storage, "r", parts_per_category=1)
    storage.delete("r/knowledge/round_0/" + storage.list_parts("r/knowledge/round_0")[0])
    with pytest.raises(ValueError, match=r"part-00.parquet.*no knowledge yet.*jobs/extract.py"):
        _plans(storage, per_category=False)


def test_scores_of_a_round_must_match_the_units(run):
    storage, _ = run
    (plan,) = _plans(storage, per_category=False)
    item = plan.items[0]
    out = plan.tables(1).scores_dir
    for part in item.knowledge_parts:
        storage.write_part(out, scores_to_table({"Mug/0-1": np.ones(1)}), [], part)
    source = PartSource(storage, Tables(plan.shapes_dir, plan.units_dir, out), [item], plan.space, 32, 4, seed=0)
    with pytest.raises(ValueError, match="scores of Mug/0-1 do not match its 2 units"):
        list(source.scan())


def test_sums_give_the_same_means_as_the_table():
    rng = np.random.default_rng(0)
    table, sums = MIoUTable(), MIoUSums()
    for i in range(30):
        truth, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
        cat = ["a", "b", "c"][i % 3]
        table.add(str(i), cat, pred, truth, 3)
        part = MIoUSums()
        part.add(str(i), cat, pred, truth, 3)
        sums.merge(part)
    assert sums.per_category() == pytest.approx(table.per_category())
    assert sums.category_mean() == pytest.approx(table.category_mean())
    assert sums.shape_mean() == pytest.approx(table.shape_mean())
    assert len(sums) == len(table) == 30


@pytest.mark.parametrize(
    ("workers", "gpus", "cluster", "expected"),
    [
        (1, 0.0, {"CPU": 8.0}, 8),
        (2, 0.0, {"CPU": 8.0}, 4),
        (4, 1.0, {"CPU": 64.0, "GPU": 8.0}, 2),
        (2, 0.0, {"CPU": 1.0}, 1),
    ],
)
def test_students_run_concurrently_as_the_cluster_holds_groups(workers, gpus, cluster, expected):
    cfg = load_config([f"cluster.train_workers={workers}", f"cluster.gpus_per_worker={gpus}"])
    assert concurrent_students(cfg, cluster) == expected
    fixed = load_config(["cluster.concurrent_students=3"])
    assert concurrent_students(fixed, cluster) == 3


def test_statistics_subsets_cover_every_category_and_skip_full_parts(tmp_path):
    """Calibration, references and validation are shared by the categories: with parts stored
    grouped by category, "the first 64 shapes" would all be the first category's."""
    storage = Storage(str(tmp_path))
    _write(storage, "r", per_part=30, parts_per_category=3)  # 29 shapes with units a part
    (plan,) = _plans(storage, per_category=False)
    source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=0, val_fraction=0.2)
    storage.reads.reset()
    calib = source.calibration_samples()
    by_cat = np.bincount([s.category for s in calib], minlength=2)
    assert by_cat.tolist() == [32, 32]  # 64 shared by Lamp and Mug
    assert all(source.is_train(s) for s in calib)
    assert storage.reads.rows["r/shapes"] < 6 * 30  # a category's last part is never read
    refs = source.reference_samples()
    assert np.bincount([s.category for s in refs]).tolist() == [32, 32]
    val = [s.category for chunk in source.validation_chunks() for s in chunk]
    assert set(val) == {0, 1}


def test_in_memory_calibration_is_stratified_too():
    from distill.labels import LabelSpace
    from distill.samples import prepare_sample
    from distill.sources import CALIBRATION_SHAPES, InMemorySource

    rng = np.random.default_rng(0)
    shapes = [Shape(f"{c}/{i}", c, ["a", "b"], rng.normal(size=(16, 3))) for c in ("A", "B", "C") for i in range(40)]
    space = LabelSpace.from_shapes(shapes)
    samples = []
    for s in shapes:
        u = KnowledgeUnits.from_lists(s.shape_id, [0], [0], [0.9], [np.arange(8)])
        samples.append(prepare_sample(s, u, space))
    calib = InMemorySource(samples, 4, seed=0).calibration_samples()
    assert np.bincount([s.category for s in calib]).tolist() == [CALIBRATION_SHAPES // 3] * 3


def test_order_seed_changes_the_order_alone(run):
    storage, _ = run
    (plan,) = _plans(storage, per_category=False)

    def order(**kw) -> list[str]:
        source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=1, shuffle_samples=8, **kw)
        return [sid for b in source.train_batches(0, {}) for sid in b.shape_ids]

    assert order() == order(order_seed=1)  # default: the run's seed
    other = order(order_seed=7)
    assert other != order() and sorted(other) == sorted(order())
    cfg = load_config(["train.order_seed=7", "seed=1"])
    assert cfg.train.data_order_seed(cfg.seed) == 7
    assert load_config(["seed=3"]).train.data_order_seed(3) == 3


def test_class_count_samples_are_training_shapes_of_every_category(run):
    from distill.sources import CLASS_COUNT_SHAPES

    storage, _ = run
    (plan,) = _plans(storage, per_category=False)
    source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=0, val_fraction=0.3)
    picked = source.class_count_samples()
    assert all(source.is_train(s) for s in picked)
    counts = np.bincount([s.category for s in picked], minlength=2)
    assert counts.tolist() == [min(CLASS_COUNT_SHAPES, n) for n in np.bincount([s.category for s in (
        s for chunk in source.scan() for s in chunk if source.is_train(s))], minlength=2)]  # fmt: skip


def test_a_category_without_units_is_planned_untrained(tmp_path):
    storage = Storage(str(tmp_path))
    _write(storage, "r", parts_per_category=1)
    rng = np.random.default_rng(1)
    cups = [Shape(f"Cup/{i}", "Cup", ["body", "handle"], rng.normal(size=(64, 3))) for i in range(3)]
    name = "part-cups.parquet"
    done = [s.shape_id for s in cups]
    storage.write_part("r/shapes", shapes_to_table(cups), done, name, shape_summary(cups))
    storage.write_part(
        "r/knowledge/round_0", units_to_table([]), done, knowledge_part_name(name, done),
        {"shape_part": name, "with_units": {"Cup": 0}, "units": 0},
    )  # fmt: skip
    (one,) = _plans(storage, per_category=False)
    assert one.space.categories == ("Cup", "Lamp", "Mug") and one.untrained == ("Cup",)
    assert StudentPlan.from_dict(one.to_dict()) == one
    assert [p.name for p in _plans(storage, per_category=True)] == ["Lamp", "Mug"]


def test_fit_outcome_is_a_flat_train_info():
    from cluster.training.train import FitOutcome

    outcome = FitOutcome({"student": "all", "epochs": 6}, rescore_due=True)
    assert outcome.to_dict() == {"student": "all", "epochs": 6, "rescore_due": True}  # train_info.json
    assert FitOutcome.from_dict(outcome.to_dict()) == outcome


def test_superpoint_settings_reach_the_samples(run):
    """train.superpoint_targets pools the fits' units (re-scoring reads them as stored);
    train.superpoint_consistency makes the samples carry superpoints, through Ray's rows too.
    The shapes were written without the column: superpoints are computed on reading."""
    storage, _ = run
    cfg = load_config([f"storage.root={storage.root_uri}", "train.superpoint_targets=true",
                       "train.superpoint_consistency=0.5"])  # fmt: skip
    (plan,) = plan_students(cfg, storage, "r/shapes", "r/knowledge/round_0")
    assert plan.pool and plan.superpoints and StudentPlan.from_dict(plan.to_dict()) == plan
    assert plan.tables(1, pooled=False).pool is False
    pooled = {s.shape_id: s for chunk in PartSource(storage, plan.tables(0), plan.items, plan.space, None, 4, 0).scan()
              for s in chunk}  # fmt: skip
    stored = {s.shape_id: s for chunk in PartSource(storage, Tables(plan.shapes_dir, plan.units_dir), plan.items,
                                                    plan.space, None, 4, 0).scan() for s in chunk}  # fmt: skip
    sid = "Mug/0-1"
    a, b = pooled[sid], stored[sid]
    assert a.superpoints is not None and b.superpoints is None and len(a.superpoints) == 64
    assert a.num_units != b.num_units  # one unit per (superpoint, part) with evidence
    covered = np.zeros(64, bool)
    covered[a.point_idx.numpy()] = True
    sp = a.superpoints.numpy()
    assert set(sp[covered]) == set(sp)  # pooled units cover whole superpoints
    back = table_to_samples(samples_to_table([a, b]))
    assert np.array_equal(back[0].superpoints.numpy(), sp) and back[1].superpoints is None


def test_a_cross_fitted_student_holds_its_fold_out_and_refuses_an_empty_one(run):
    from distill.errors import NotFoundError
    from distill.sources import fold_of

    storage, ids = run
    (plan,) = _plans(storage, per_category=False)
    with_units = {sid for sid in ids if not sid.endswith("-0")}
    for fold in (0, 1):
        source = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=0, fold=(fold, 2))
        seen = {sid for b in source.train_batches(0, {}) for sid in b.shape_ids}
        assert seen == {sid for sid in with_units if fold_of(sid, 0, 2) != fold}
    # One fold in all (K = 1): the student of fold 0 would learn from nothing.
    empty = PartSource(storage, plan.tables(0), plan.items, plan.space, 32, 4, seed=0, fold=(0, 1))
    with pytest.raises(NotFoundError, match="fold 0 has no training shape"):
        list(empty.train_batches(0, {}))
