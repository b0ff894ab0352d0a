"""A local Ray answers Ray's state API (``ray.util.state``), for its workers too.

Ray Train's controller starts a ``PlacementGroupCleaner`` actor that asks the state API
once a second whether the controller still lives. A local Ray started without its
dashboard has no state API: every such question failed and logged ``Failed to query Ray
Train Controller actor state`` (hundreds of lines a long fit). ``connect`` starts the
dashboard on 127.0.0.1 and points its workers at it (``RAY_API_SERVER_ADDRESS``), so the
answer comes from this Ray even where other Ray instances run on the machine.
"""

import re

import pytest

from tests.cluster.conftest import local_ray
from tests.conftest import run_fresh


def test_a_worker_asks_the_state_api_of_its_own_local_ray():
    import ray

    with local_ray(1):

        @ray.remote(num_cpus=0)
        class Alive:
            def ping(self) -> bool:
                return True

        @ray.remote(num_cpus=0)
        def ask(actor_id: str) -> tuple[str, str]:
            import os

            from ray.util.state import get_actor

            state = get_actor(actor_id, timeout=10)  # what the PlacementGroupCleaner asks
            return os.environ.get("RAY_API_SERVER_ADDRESS", ""), state.state if state else "missing"

        actor = Alive.remote()
        assert ray.get(actor.ping.remote())
        api_server, state = ray.get(ask.remote(actor._actor_id.hex()))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", api_server), api_server  # loopback only
        assert state == "ALIVE"  # this Ray's actor: the worker asked this Ray, not another


# A fit of one epoch on one worker: the smallest job that reaches Ray Train.
ARGS = ["--config", "smoke", "data.categories=[chair]", "data.per_category=2", "progress=false"]
ARGS += ["run=quiet", "cluster.backend=ray", "cluster.num_cpus=2", "cluster.train_workers=1", "encoder.epochs=1"]
NOISE = re.compile(r"(?i)error|exception|traceback|failed|warn")


@pytest.mark.slow  # about a minute: a local Ray and a Ray Train fit, in a fresh interpreter
def test_a_ray_train_fit_logs_no_state_api_failures(tmp_path):
    run = run_fresh(["jobs/pretrain_encoder.py", *ARGS, f"storage.root={tmp_path}"], timeout=600)
    assert '"backend": "ray"' in run.stdout.strip().splitlines()[-1]
    output = run.stdout + run.stderr
    assert "Failed to query Ray Train Controller" not in output
    cleaner = [line for line in output.splitlines() if "PlacementGroupCleaner" in line and NOISE.search(line)]
    assert not cleaner, "\n".join(cleaner[:20])
