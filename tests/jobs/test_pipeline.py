"""The jobs end to end in one process (no Ray): smoke pretrain, re-run, segment, ingest rejects."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from cluster.config import load_config
from cluster.job import run_job
from cluster.passes.ingest import ingest
from cluster.passes.segment import segment
from cluster.pipeline import extract_stage, pretrain
from cluster.store.rejects import read_rejects
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_student
from distill.metrics import MIoUSums
from distill.passes import predict
from distill.records import row_to_shape
from distill.student import build_student
from tests.conftest import REPO, SMOKE_VOTING, SMOKE_VOTING_NEAREST, run_fresh, shared_data

# The smoke run's recorded mIoU (category mean over its 6 evaluated shapes); see the test.
SMOKE_STUDENT = 26.26
SMOKE_STUDENT_TOL = 4.0  # one torch thread (the tests' session fixture); ±4 for other CPUs' kernels


def _untrained_student_miou(argv: list[str]) -> float:
    """The smoke student as ``train_local`` builds it before its first step (``cfg.seed``,
    no training), scored on the evaluated shapes as the evaluation stage scores students."""
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    _, space, _ = load_student(storage, cfg.run, "all")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_student(cfg.student, space.num_slots, space.num_categories).eval()
    shapes = [row_to_shape(r) for r in storage.read_table(f"{cfg.run}/eval/shapes").to_pylist()]
    sums = MIoUSums()
    for s, pred in zip(shapes, predict(model, shapes, "cpu", cfg.train.batch_size, space)):
        sums.add(s.shape_id, s.category, pred, s.labels, s.num_parts)
    return round(sums.category_mean(), 2)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    argv = ["--config", "smoke", f"storage.root={root}", "cluster.backend=local"]
    summary = run_job("pretrain", pretrain, argv)
    return root, argv, summary


def test_smoke_run_leaves_training_curves(smoke_run):
    from PIL import Image

    root, _, summary = smoke_run
    png = root / "smoke" / "training_curves.png"
    assert Image.open(png).size[0] > 0
    # One event file a fit: the first stops for the re-scoring pass, the second resumes.
    files = sorted((root / "smoke" / "tensorboard" / "all").glob("events.out.tfevents.*"))
    assert len(files) == 2
    losses = sorted(p for f in files for p in scalars(f, "train/loss"))
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    assert [v for _, v in losses] == pytest.approx([h for h in _history_losses(root)], abs=1e-4)


def scalars(path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in a TensorBoard event file (TFRecord framing: length,
    its CRC, an ``Event`` proto, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out, data = [], path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def _history_losses(root) -> list[float]:
    import torch

    bundle = torch.load(root / "smoke" / "checkpoints" / "all" / "final.pt", weights_only=False)
    return [h["loss"] for h in bundle["history"]]


def test_smoke_pretrain_learns_and_reports(smoke_run):
    root, argv, summary = smoke_run
    assert summary["job"] == "pretrain" and summary["mode"] == "pre"
    for key in ("voting", "voting_nearest", "voting_views", "voting_superpoints", "student", "student_units"):
        assert 0.0 <= summary[key] <= 100.0 and key in summary["per_category"]
    # The bar: the best teacher-only row, and each student row's lead over it.
    best = summary["best_teacher"]
    assert best["mean"] == max(summary[m] for m in ("voting", "voting_nearest", "voting_views", "voting_superpoints"))
    assert summary[best["name"]] == best["mean"]
    for m in ("student", "student_units"):
        assert summary["lead_best"][m] == pytest.approx(summary[m] - best["mean"], abs=0.02)
    (student,) = summary["train"]["students"]
    assert student["epochs"] == 4 and student["rounds"] == 1
    assert student["last_loss"] < student["first_loss"]
    # Recorded figures (diffusers' fast tests compare recorded output slices). The teacher's
    # votes are deterministic: 43.47 / 47.53 at the default teacher.view_correlation=0.8
    # (40.04 / 42.66 at 0), on 1 and 2 torch threads.
    assert summary["voting"] == pytest.approx(SMOKE_VOTING, abs=0.1)
    assert summary["voting_nearest"] == pytest.approx(SMOKE_VOTING_NEAREST, abs=0.1)
    # So is the student for a given torch thread count (the tests run on one): shape parts are
    # named by a digest of their ids, so the training stream's part order is fixed. The thread
    # count and the CPU's kernels change the float sums' order: on 2 threads it differs by
    # several points, so the tolerance is for other CPUs on one thread, no more.
    assert summary["student"] == pytest.approx(SMOKE_STUDENT, abs=SMOKE_STUDENT_TOL)
    # A student that learned nothing fails both: the same student at its initial weights
    # scores 10.62 (the recorded range starts 12 points higher), checked here directly;
    # trained with train.lr=1e-9 it scores 8.99 (and its loss still falls: re-scoring).
    # Not claimed: beating chance. Labelling every point with its shape's most common part
    # scores 31.79 on these 6 shapes, inside the student's range (the teacher: 43.47).
    untrained = _untrained_student_miou(argv)
    assert untrained == pytest.approx(10.62, abs=1.0)
    assert summary["student"] > untrained + 10.0
    metrics = json.loads((root / "smoke" / "metrics.json").read_text())
    assert metrics["pretrain"]["student"] == summary["student"]
    for rel in (
        "shapes",
        "knowledge/round_0",
        "knowledge/round_1",
        "checkpoints/all/final.pt",
        "predictions",
        "evaluation.md",
    ):
        assert (root / "smoke" / rel).exists(), rel


def test_rerun_skips_finished_work(smoke_run, monkeypatch):
    _, argv, first = smoke_run
    import cluster.passes.evaluate

    def no_second_vote(*args, **kwargs):
        raise AssertionError("the voting baselines of unchanged parts were computed again")

    monkeypatch.setattr(cluster.passes.evaluate, "baselines", no_second_vote)
    again = run_job("pretrain", pretrain, argv)
    assert again["extract"]["extract"]["new"] == 0 and again["extract"]["extract"]["skipped"] == 12
    assert again["extract"]["baselines"]["voting"] == first["extract"]["baselines"]["voting"]
    assert again["train"]["skipped"] == ["all"] and again["train"]["students"] == []
    assert again["student"] == first["student"]
    stages = ("ingest", "extract", "baselines")
    assert all(again["extract"][k]["seconds"] >= 0 and again["extract"][k]["started_at"] > 0 for k in stages)


def test_baselines_are_voted_again_when_the_parts_change(smoke_run, tmp_path):
    root, argv, first = smoke_run
    from cluster.pipeline import baselines

    cfg = load_config(argv)
    # A copy of the run's tables without one shape part and its knowledge, the cached vote kept.
    src = root / "smoke"
    dropped = sorted((src / "shapes").glob("*.parquet"))[0].stem
    for table in ("shapes", "knowledge/round_0"):
        (tmp_path / table).mkdir(parents=True)
        for p in (src / table).iterdir():
            if p.suffix == ".parquet" and not p.stem.startswith(dropped) or p.name == "_baselines.json":
                (tmp_path / table / p.name).write_bytes(p.read_bytes())
    fewer = baselines(cfg, Storage(str(tmp_path)), "shapes", "knowledge/round_0")
    assert 0 < fewer["voting"]["num_shapes"] < first["extract"]["baselines"]["voting"]["num_shapes"]
    storage = Storage.from_config(cfg.storage)
    again = baselines(cfg, storage, "smoke/shapes", "smoke/knowledge/round_0")
    methods = ("voting", "voting_nearest", "voting_views", "voting_superpoints")
    assert set(again) == set(methods) and again == {m: first["extract"]["baselines"][m] for m in methods}


def test_ingest_stores_superpoints_and_old_tables_get_them_computed(smoke_run, tmp_path):
    root, argv, first = smoke_run
    import pyarrow.parquet as pq

    from cluster.pipeline import baselines

    storage = Storage.from_config(load_config(argv).storage)
    shapes = [row_to_shape(r) for r in storage.read_table("smoke/shapes").to_pylist()]
    for s in shapes:  # one geometric segment per point, several per shape, numbered 0..S−1
        assert s.superpoints is not None and s.superpoints.shape == (s.num_points,)
        assert 1 < s.superpoints.max() + 1 == len(np.unique(s.superpoints)) < s.num_points
    # A table written before the column: evaluation computes them, to the same vote.
    for table in ("shapes", "knowledge/round_0"):
        (tmp_path / table).mkdir(parents=True)
        for p in (root / "smoke" / table).glob("*.parquet"):
            t = pq.read_table(p)
            if table == "shapes":
                t = t.drop_columns(["superpoints"]).replace_schema_metadata(t.schema.metadata)
            pq.write_table(t, tmp_path / table / p.name)
    old = baselines(load_config(argv), Storage(str(tmp_path)), "shapes", "knowledge/round_0")
    assert old["voting_superpoints"] == first["extract"]["baselines"]["voting_superpoints"]


def test_extracting_into_another_teachers_knowledge_is_refused(smoke_run, capsys):
    from distill.config import ConfigError

    _, argv, _ = smoke_run
    other = [*argv, "teacher.view_correlation=0.0"]
    storage = Storage.from_config(load_config(argv).storage)
    with pytest.raises(ConfigError, match=r"teacher\.view_correlation=0\.8.*teacher\.view_correlation=0\.0"):
        extract_stage(load_config(other), storage)
    with pytest.raises(SystemExit) as exit_info:  # the job prints it as one line
        run_job("extract", extract_stage, other)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "use another run name" in line


def test_segment_user_files_gives_labels_ply_and_pictures(smoke_run, tmp_path):
    root, _, _ = smoke_run
    from generation.procedural import make_mesh

    folder = tmp_path / "chairs"
    folder.mkdir()
    for i in range(2):
        mesh, _ = make_mesh("chair", 900 + i, 1)
        trimesh.Trimesh(mesh.vertices, mesh.faces).export(folder / f"my_chair_{i}.obj")
    (folder / "broken.obj").write_text("v 0 0 0\nf 1 1 1\n")
    cfg = load_config(
        [
            "--config",
            "smoke",
            f"storage.root={root}",
            "data.source=files",
            f"data.path={folder}",
            "data.category=CHAIR",
            "data.categories=[]",
        ]
    )
    storage = Storage.from_config(cfg.storage)
    summary = segment(cfg, storage)
    assert summary["segmented"] == 2 and summary["pictures"] == 2
    out = root / "smoke" / "segment"
    ply = sorted((out / "ply").glob("*.ply"))
    assert len(ply) == 2
    cloud = trimesh.load(ply[0])
    assert len(cloud.vertices) == cfg.data.num_points
    assert len(list((out / "png").glob("*.png"))) == 2
    assert any("broken" in r["item"] for r in read_rejects(storage, "smoke", "ingest"))


def test_job_cli_last_line_is_json_and_bad_key_fails(tmp_path):
    argv = [f"storage.root={tmp_path}", "data.per_category=1", "data.categories=[lamp]", "progress=false"]
    run = run_fresh(["jobs/ingest.py", *argv], timeout=300)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["shapes"] == 1 and summary["categories"] == ["Lamp"]
    bad = subprocess.run(
        [sys.executable, "jobs/ingest.py", "data.num_pionts=3"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "num_pionts" in bad.stderr


def test_ingest_rejects_bad_files_and_goes_on(tmp_path):
    folder = tmp_path / "shapes" / "lamp"
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "good.stl")
    (folder / "empty.obj").write_text("")
    (folder / "nan.off").write_text("OFF\n3 1 0\n0 0 0\nnan 1 0\n0 1 1\n3 0 1 2\n")
    (folder / "truncated.off").write_text("OFF\n8 12 0\n0 0 0\n1 0 0\n")
    (folder / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    cfg = load_config(
        [f"storage.root={tmp_path / 'runs'}", "data.source=files", f"data.path={tmp_path / 'shapes'}", "progress=false"]
    )
    storage = Storage.from_config(cfg.storage)
    summary = ingest(cfg, storage)
    assert summary["new"] == 1 and summary["rejected"] == 4 and summary["shapes"] == 1
    reasons = {Path(r["item"]).name: r["reason"] for r in read_rejects(storage, cfg.run, "ingest")}
    assert set(reasons) == {"empty.obj", "nan.off", "truncated.off", "flat.obj"}
    assert all(reasons.values())
    again = ingest(cfg, storage)
    assert again["new"] == 0 and again["skipped"] == 5 and again["rejects_total"] == 4


def test_extract_job_on_psb_reports_voting_per_category(tmp_path):
    path = shared_data("labeled_psb")
    cfg = load_config(
        [
            f"storage.root={tmp_path}",
            "data.source=psb",
            f"data.path={path}",
            "data.categories=[Cup,Chair]",
            "data.per_category=2",
            "render.image_size=160",
            "progress=false",
            "run=psb",
        ]
    )
    summary = extract_stage(cfg, Storage.from_config(cfg.storage))
    assert summary["extract"]["new"] == 4 and summary["extract"]["units"] > 0
    voting = summary["baselines"]["voting"]
    assert set(voting["per_category"]) == {"Chair", "Cup"} and 0 < voting["category_miou"] < 100
    assert summary["baselines"]["voting_nearest"]["category_miou"] >= voting["category_miou"] - 1e-6


@pytest.mark.slow
def test_ingest_psb_all_190(tmp_path):
    path = shared_data("labeled_psb")
    cfg = load_config([f"storage.root={tmp_path}", "data.source=psb", f"data.path={path}", "progress=false", "run=psb"])
    storage = Storage.from_config(cfg.storage)
    summary = ingest(cfg, storage)
    assert summary["shapes"] == 190 and summary["rejected"] == 0 and len(summary["categories"]) == 19
    table = storage.read_table("psb/shapes", columns=["num_points", "labels"])
    assert set(table.column("num_points").to_pylist()) == {2048}
    assert all(np.min(lab) >= 0 for lab in table.column("labels").to_pylist())


def test_extract_stage_on_a_mix_of_real_and_generated(tmp_path):
    # data.source=mix through the same ingest → extract chain: 1 real : 2 generated shapes
    # a category, one vocabulary (PSB Chair's backsupport/support/... become back/seat/...).
    path = shared_data("labeled_psb")
    cfg = load_config(
        [
            f"storage.root={tmp_path}",
            "data.source=mix",
            "data.categories=[Chair,Cup]",
            "data.vocabulary=[procedural,psb]",
            f"data.mix=[{{source: psb, path: {path}, per_category: 1}}, {{source: procedural, per_category: 2}}]",
            "data.num_points=512",
            "render.image_size=96",
            "progress=false",
            "run=mix",
        ]
    )
    storage = Storage.from_config(cfg.storage)
    summary = extract_stage(cfg, storage)
    assert summary["ingest"]["new"] == 6 and summary["ingest"]["rejected"] == 0
    assert summary["extract"]["new"] == 6 and summary["extract"]["units"] > 0
    table = storage.read_table("mix/shapes", columns=["shape_id", "category", "part_names", "source"]).to_pylist()
    assert sorted(r["shape_id"] for r in table) == [
        "procedural/Chair/00000",
        "procedural/Chair/00001",
        "procedural/Cup/00000",
        "procedural/Cup/00001",
        "psb/Chair/101",
        "psb/Cup/21",
    ]
    parts = {(r["category"], r["source"]): r["part_names"] for r in table}
    assert parts[("Chair", "psb")] == parts[("Chair", "procedural")] == ["back", "seat", "leg", "armrest"]
    assert parts[("Cup", "psb")] == parts[("Cup", "procedural")] == ["body", "handle"]
    assert set(summary["baselines"]["voting"]["per_category"]) == {"Chair", "Cup"}


def test_segment_pools_the_students_labels_over_superpoints(smoke_run):
    """student.pool=superpoints: each superpoint of a segmented shape takes one label
    (the student alone; superpoints read from the shape table)."""
    root, argv, _ = smoke_run
    cfg = load_config([*argv, "run=pooled", "segment.students_from=smoke", "data.source=table",
                       "data.path=smoke/shapes", "student.pool=superpoints", "segment.pictures=0"])  # fmt: skip
    storage = Storage.from_config(cfg.storage)
    summary = segment(cfg, storage)
    assert summary["segmented"] > 0, summary
    shapes = {s.shape_id: s for s in (row_to_shape(r) for r in storage.read_table("smoke/shapes").to_pylist())}
    labels = storage.read_table("pooled/segment/labels").to_pylist()
    for row in labels:
        sp, pred = shapes[row["shape_id"]].superpoints, np.asarray(row["labels"])
        assert all(len(np.unique(pred[sp == j])) == 1 for j in np.unique(sp)), row["shape_id"]
