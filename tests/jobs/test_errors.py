"""A user error ends a job with one line on standard error, ``error: <what> — <what to
do>``, and exit status 2 (``cluster.job.run_job``); any other error keeps its traceback.
Each case fails before any heavy work, so the jobs run in this process (one in a child
interpreter, for the real exit status and the absence of a traceback)."""

import subprocess
import sys
import time

import pytest

from cluster.job import run_job
from tests.conftest import REPO, free_port, fresh_env


def _user_error(capsys, main, *argv: str) -> str:
    """Run a job's ``main``; it must exit 2 → the one ``error:`` line it printed."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "progress=false"])
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    assert " — " in lines[0]
    return lines[0]


def test_a_bad_config_key(tmp_path, capsys):
    from jobs.ingest import main

    line = _user_error(capsys, main, f"storage.root={tmp_path}", "train.epochs=0")
    assert line == (
        "error: train.epochs=0 must be > 0 — fix that key (key=value on the command line, or in the --config file)"
    )


def test_a_missing_data_path(tmp_path, capsys):
    from jobs.ingest import main

    line = _user_error(capsys, main, f"storage.root={tmp_path}", "data.source=psb", f"data.path={tmp_path}/nope")
    assert line == (
        f"error: data.path='{tmp_path}/nope' is not a folder (data.source=psb) — point data.path at the dataset's folder"
    )


def test_an_unknown_category(tmp_path, capsys):
    from jobs.ingest import main

    line = _user_error(capsys, main, f"storage.root={tmp_path}", "data.categories=[spaceship]")
    assert line.startswith("error: data.categories: unknown procedural category 'spaceship' — use one of: Airplane, ")


def test_a_run_with_no_trained_student(tmp_path, capsys):
    from jobs.evaluate import main

    line = _user_error(capsys, main, f"storage.root={tmp_path}", "run=empty", "mode=tta")
    assert line == (
        f"error: {tmp_path}/empty/checkpoints: run 'empty' has no finished student — "
        "train one first (jobs/train.py, or jobs/pretrain.py for the whole pipeline)"
    )
    assert not (tmp_path / "empty" / "knowledge").exists()  # refused before any work


def test_an_unreachable_bucket_fails_fast(tmp_path, capsys, monkeypatch):
    from jobs.ingest import main

    port = free_port()  # nothing listens there: every connection is refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    start = time.perf_counter()
    line = _user_error(capsys, main, "storage.root=s3://nobucket/runs")
    assert time.perf_counter() - start < 20  # botocore's default retries took ~10 s for the probe alone
    assert line.startswith("error: storage.root=s3://nobucket/runs: cannot reach bucket 'nobucket' (")
    assert line.endswith(" — check storage.endpoint_url / AWS_ENDPOINT_URL and the network")


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    def stage(cfg, storage):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_job("broken", stage, [f"storage.root={tmp_path}"])


def test_the_job_exits_2_with_one_line_and_no_traceback(tmp_path):
    """The command line as a user runs it: training a run that holds nothing yet."""
    run = subprocess.run(
        [sys.executable, "jobs/train.py", f"storage.root={tmp_path}", "run=none", "progress=false"],
        cwd=REPO,
        env=fresh_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert run.stderr.splitlines()[-1] == (
        f"error: {tmp_path}/none/shapes holds no shapes — run jobs/ingest.py (or extract) first"
    )
