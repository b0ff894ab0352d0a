"""The common local Ray of the cluster tests: one per test module (docs/design.md §5.10).

Module scope, not session: a module's actors, Ray Data state and killed workers (the fault
tests) never leak into the next module, and modules that need a Ray of their own — the
two-node ``ray.cluster_utils.Cluster``, the autoscaling tests' ``ray start --head`` under a
private ``RAY_TMPDIR``, ``ray job submit`` against ``ray start --head``, ``connect()``'s own
test — find none running. Each start costs a few seconds, paid by the modules that use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@contextmanager
def local_ray(num_cpus: int = 2, env_vars: dict[str, str] | None = None) -> Iterator[None]:
    """A fresh local Ray of ``num_cpus`` CPUs (through ``cluster.runtime.connect``, as the
    jobs start theirs) for the block; ``env_vars`` reach its workers."""
    import ray

    from cluster.config import ClusterConfig
    from cluster.runtime.connect import connect

    if ray.is_initialized():  # left by a test that did not clean up: start from nothing
        ray.shutdown()
    connect(ClusterConfig(num_cpus=num_cpus), runtime_env={"env_vars": env_vars} if env_vars else None)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(s3_endpoint) -> Iterator[None]:
    """One local Ray (2 CPUs) for the module; its workers get the moto S3 server's
    credentials and endpoint (``s3_endpoint``), so any stage can use ``s3://`` storage."""
    with local_ray(2, {k: os.environ[k] for k in AWS_ENV}):
        yield


@pytest.fixture(scope="session")
def cluster_yaml() -> dict:
    """``ray_cluster.yaml`` as a dict (treat as read-only: it is shared by the session)."""
    from tests.cluster.fake_autoscaler import load_cluster_yaml

    return load_cluster_yaml()


@pytest.fixture(scope="module")
def bd_extracted(tmp_path_factory):
    """The backward-distillation tests' run (``tests/cluster/bd_run.py``), extracted once a module."""
    from tests.cluster.bd_run import extract_run

    root = tmp_path_factory.mktemp("extracted")
    extract_run(root)
    return root
