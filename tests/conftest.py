"""Shared fixtures: the real data folder (when present), a real S3 server on loopback, one
torch thread per test, and the helpers that run code in a fresh interpreter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SMOKE_VOTING = 43.47
SMOKE_VOTING_NEAREST = 47.53
"""The smoke run's recorded teacher votes (``--config smoke``, mean over categories): the
votes are deterministic, the same in every run measured, on 1 and 2 torch threads, in one
process or on Ray; the smoke tests and the ``ray job submit`` test compare them."""


def shared_data(name: str) -> Path:
    """A folder of ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the repository)")
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Torch on one thread for the whole session (module fixtures included). The tests'
    tensors are tiny: one thread is faster, and robust on a busy machine (OpenMP threads
    spin-waiting for a descheduled sibling made the library tests 50x slower, rendering
    30x). A test that needs another count sets it and restores it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child interpreter that starts a Ray of its own: no
    ``RAY_ADDRESS`` (it must not join another cluster) and ``RAY_AUTH_MODE=disabled`` (a
    private loopback cluster needs no token), plus ``extra``."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def run_fresh(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, tail: int = 4000
) -> subprocess.CompletedProcess:
    """``python args...`` in a fresh interpreter in the repository (``fresh_env`` unless
    ``env``); fails the test with the tails of its output when it exits non-zero."""
    run = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=fresh_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        pytest.fail(f"{' '.join(args[:3])} exited {run.returncode}:\n{run.stdout[-tail:]}\n{run.stderr[-tail:]}")
    return run


def run_test_fresh(test_file: str, test: str, flag: str, timeout: float = 600, show: bool = False) -> None:
    """Run one test of ``test_file`` alone in a fresh interpreter, with the environment
    variable ``flag`` set so that it is not skipped there. Ray Data and Ray Train keep state
    of the first Ray session a process joins, so tests that need a cluster of their own run
    this way. show: print the child's output (its figures) into this test's output."""
    run = run_fresh(
        # -m "": the child selects its one test by name, whatever lane the markers put it in
        ["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-m", "", f"{test_file}::{test}"],
        env=fresh_env(**{flag: "1"}),
        timeout=timeout,
        tail=6000,
    )
    if show:
        print(run.stdout[-6000:])
    assert "1 passed" in run.stdout, run.stdout[-3000:]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A tiny random-weight Shap-E pipeline saved once a session (``tests/generation/tiny_shap_e.py``)."""
    from tests.generation.tiny_shap_e import build_tiny_shap_e

    return build_tiny_shap_e(str(tmp_path_factory.mktemp("tiny_shap_e")), seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a real HTTP endpoint, not an in-process mock)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the moto server; yields its ``s3://`` URI."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    yield f"s3://{name}"
