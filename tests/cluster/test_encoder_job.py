"""jobs/pretrain_encoder.py in this process: the smoke encoder, the student starting from
it (loaded whole, frozen or fine-tuned), an exact resume of a killed fit, and every bad
input ending in one line."""

import json

import pytest
import torch

from cluster.config import load_config
from cluster.job import run_job
from cluster.pipeline import extract_stage, pretrain_encoder, train_stage
from cluster.store.storage import Storage
from cluster.training.checkpoints import load_student, load_torch
from cluster.training.encoder import CloudSource, encoder_file, plan_encoder, run_fit
from distill.errors import NotFoundError
from jobs.pretrain_encoder import main as pretrain_encoder_main

SMOKE = ["--config", "smoke", "progress=false", "data.categories=[chair,lamp]", "data.per_category=3"]


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder")
    summary = pretrain_encoder_main([*SMOKE, "run=enc", f"storage.root={root}"])
    return root, summary


def test_smoke_encoder_job(encoder_run):
    root, summary = encoder_run
    assert list(summary)[-2:] == ["encoder", "seconds"]  # the path is the summary's last field
    assert summary["encoder"] == str(root / "enc" / "encoder" / "encoder.pt")
    assert summary["backend"] == "local" and summary["epochs"] == 2 and summary["shapes"] == 6
    bundle = torch.load(summary["encoder"], weights_only=True)
    assert bundle["format"] == "partdistill-encoder/1" and (bundle["width"], bundle["num_points"]) == (16, 1024)
    assert len(bundle["history"]) == 2 and all(h["loss"] > 0 for h in bundle["history"])
    assert (root / "enc" / "encoder" / "last.pt").is_file()
    assert any((root / "enc" / "tensorboard" / "encoder").iterdir())
    again = pretrain_encoder_main([*SMOKE, "run=enc", f"storage.root={root}"])  # done: skipped
    assert again["skipped"] is True and again["encoder"] == summary["encoder"]


@pytest.mark.parametrize("freeze", [False, True])
def test_student_starts_from_the_encoder(encoder_run, tmp_path, caplog, freeze):
    root, summary = encoder_run
    run = f"st{int(freeze)}"
    value = "enc" if freeze else summary["encoder"]  # a run name or the file's path
    cfg = load_config(
        [
            *SMOKE,
            f"run={run}",
            f"storage.root={root}",
            f"student.pretrained={value}",
            f"student.freeze_encoder={freeze}",
        ]
    )
    storage = Storage.from_config(cfg.storage)
    extract_stage(cfg, storage)
    with caplog.at_level("INFO"):
        trained = train_stage(cfg, storage)
    n = len(torch.load(summary["encoder"], weights_only=True)["encoder"])
    assert f"pretrained encoder {summary['encoder']}: all {n} tensors loaded" in caplog.text
    info = trained["students"][0]
    assert info["pretrained"]["pretrained"] in (value, summary["encoder"]) and info["frozen_encoder"] is freeze
    model, _, _ = load_student(storage, run, "all")
    enc = torch.load(summary["encoder"], weights_only=True)["encoder"]
    weights = {k: v for k, v in model.encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    same = [torch.equal(v, enc[k]) for k, v in weights.items()]
    assert all(same) if freeze else not all(same)  # frozen: unchanged; fine-tuned: moved


def test_killed_fit_resumes_exactly(tmp_path):
    cfg = load_config([*SMOKE, "run=res", f"storage.root={tmp_path}", "encoder.epochs=3"])
    storage = Storage.from_config(cfg.storage)
    from cluster.passes.ingest import ingest

    ingest(cfg, storage)
    plan = plan_encoder(storage, "res/shapes")

    class Killed(Exception):
        pass

    def kill_after_two(state):
        if state.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run_fit(cfg, storage, plan, torch.device("cpu"), CloudSource(cfg, storage, plan), report=kill_after_two)
    assert load_torch(storage, "res/encoder/last.pt")["epoch"] == 2 and not storage.exists(encoder_file("res"))
    history = run_fit(cfg, storage, plan, torch.device("cpu"), CloudSource(cfg, storage, plan))
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    resumed = load_torch(storage, encoder_file("res"))["encoder"]

    straight = load_config([*SMOKE, "run=res2", f"storage.root={tmp_path}", "encoder.epochs=3"])
    ingest(straight, storage)
    plan2 = plan_encoder(storage, "res2/shapes")
    run_fit(straight, storage, plan2, torch.device("cpu"), CloudSource(straight, storage, plan2))
    for k, v in load_torch(storage, encoder_file("res2"))["encoder"].items():
        torch.testing.assert_close(resumed[k], v, msg=k)


def test_empty_corpus_is_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    storage = Storage(str(tmp_path))
    with pytest.raises(NotFoundError, match="holds no shapes to pretrain on"):
        plan_encoder(storage, "empty")


def _job(capsys, stage, *args: str) -> tuple[int, str]:
    """A job in this process, as ``python jobs/X.py`` runs it → (exit status, standard error)."""
    capsys.readouterr()
    try:
        run_job("job", stage, list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code)
    return code, capsys.readouterr().err


def test_bad_checkpoints_are_one_line(encoder_run, tmp_path, capsys):
    root, summary = encoder_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    cases = {
        str(bad): "is not a readable checkpoint",
        "enc student.width=8": "was trained with width=16; this student has width=8",
        "enc data.num_points=512": "num_points=1024; this student has",
        "nope": "no run of that name with an encoder",
    }
    for value, message in cases.items():
        name, *extra = value.split()
        code, err = _job(
            capsys, train_stage, *SMOKE, "run=bad", f"storage.root={root}", f"student.pretrained={name}", *extra
        )
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]


def test_resume_with_other_settings_is_one_line(encoder_run, capsys):
    root, summary = encoder_run
    # the finished run has an encoder.pt: drop it so the job resumes from last.pt with a new width
    storage = Storage(str(root))
    storage.fs.rm(storage.path(encoder_file("enc")))
    try:
        code, err = _job(capsys, pretrain_encoder, *SMOKE, "run=enc", f"storage.root={root}", "student.width=8")
        assert code == 2 and "was trained with width=16; this run asks width=8" in err.strip().splitlines()[-1]
    finally:
        pretrain_encoder_main([*SMOKE, "run=enc", f"storage.root={root}"])  # resumes at epoch 2 of 2: rewrites it
    assert json.loads(json.dumps(storage.read_json("enc/metrics.json")))["last_job"] == "pretrain_encoder"
