"""Resource specs (pure, no cluster) and ``connect`` against a real local Ray."""

import pytest

from cluster.config import ClusterConfig, load_config
from cluster.runtime.connect import (
    cluster_address,
    configure_data_context,
    connect,
    local_num_cpus,
    local_worker_soft_limit,
)
from cluster.runtime.resources import (
    fits,
    render_resources,
    rescore_actor_options,
    resource_requests,
    teacher_actor_options,
    train_scaling,
)


def test_local_num_cpus(monkeypatch):
    assert local_num_cpus(ClusterConfig(num_cpus=3)) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    assert local_num_cpus(ClusterConfig()) == 7
    with pytest.raises(ValueError, match="cluster.num_cpus"):
        local_num_cpus(ClusterConfig(num_cpus=-1))


def test_local_worker_soft_limit():
    assert local_worker_soft_limit(2) == 4 and local_worker_soft_limit(0) == 2


def test_cluster_address_prefers_config_then_env():
    assert cluster_address(ClusterConfig(address="ray://a:10001"), {"RAY_ADDRESS": "b:6379"}) == "ray://a:10001"
    assert cluster_address(ClusterConfig(), {"RAY_ADDRESS": "b:6379"}) == "b:6379"
    assert cluster_address(ClusterConfig(), {}) == ""


def test_render_resources():
    assert render_resources(load_config(["cluster.render_cpus=2"])) == {"num_cpus": 2.0}
    with pytest.raises(ValueError, match="render_cpus"):
        render_resources(load_config(["cluster.render_cpus=0"]))


def test_teacher_actor_options():
    cpu = teacher_actor_options(load_config())
    assert (cpu.size, cpu.num_gpus, cpu.num_cpus) == (1, 0.0, 1.0)
    assert cpu.remote_args() == {"num_cpus": 1.0, "num_gpus": 0.0}
    gpu = teacher_actor_options(load_config(["cluster.teacher_actors=4", "cluster.teacher_gpus=0.5"]))
    assert (gpu.size, gpu.num_gpus) == (4, 0.5)
    # 10 PartSLIP views fill a 10-image forward pass: one shape per call; 4 ring views: 5 shapes of 20 images.
    assert gpu.batch_size == 1
    ring = teacher_actor_options(load_config(["render.views=ring", "render.num_views=4", "teacher.batch_size=20"]))
    assert ring.batch_size == 5
    with pytest.raises(ValueError, match="teacher_actors"):
        teacher_actor_options(load_config(["cluster.teacher_actors=0"]))


def test_train_scaling():
    cpu = train_scaling(load_config(["cluster.train_workers=2"]))
    assert (cpu.num_workers, cpu.use_gpu, cpu.resources_per_worker) == (2, False, {"CPU": 1.0})
    gpu = train_scaling(load_config(["cluster.train_workers=4", "cluster.gpus_per_worker=1"]))
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    sc = gpu.scaling_config()
    assert sc.num_workers == 4 and sc.use_gpu and sc.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    with pytest.raises(ValueError, match="train_workers"):
        train_scaling(load_config(["cluster.train_workers=0"]))


def test_resource_requests_and_fits():
    req = resource_requests(load_config())
    assert req == {
        "render": {"CPU": 1.0},
        "teacher": {"CPU": 1.0},
        "train_worker": {"CPU": 1.0},
        "rescore": {"CPU": 1.0},
    }
    gpu = resource_requests(load_config(["cluster.rescore_gpus=1", "cluster.rescore_actors=3"]))
    assert gpu["rescore"] == {"CPU": 1.0, "GPU": 1.0}
    opts = rescore_actor_options(load_config(["cluster.rescore_actors=3"]))
    assert (opts.size, opts.num_gpus, opts.batch_size) == (3, 0.0, 1)
    with pytest.raises(ValueError, match="rescore_actors"):
        rescore_actor_options(load_config(["cluster.rescore_actors=0"]))
    assert fits({"CPU": 1, "GPU": 1}, {"CPU": 4, "GPU": 1})
    assert not fits({"CPU": 1, "GPU": 1}, {"CPU": 16})
    assert fits({}, {})


def test_configure_data_context():
    ctx = configure_data_context(progress=False)
    assert not ctx.enable_progress_bars and not ctx.enable_auto_log_stats and not ctx.verbose_stats_logs
    ctx = configure_data_context(progress=True)
    assert ctx.enable_progress_bars and ctx.enable_operator_progress_bars


def test_connect_starts_a_loopback_ray_once():
    import ray

    if ray.is_initialized():  # another module's Ray: this test needs its own
        pytest.skip("Ray is already initialised in this process")
    try:
        connect(ClusterConfig(num_cpus=2))
        ctx = ray.get_runtime_context()
        assert ctx.gcs_address.startswith("127.0.0.1:")
        assert ray.cluster_resources()["CPU"] == 2
        connect(ClusterConfig(num_cpus=1))  # already connected: a no-op, not a second Ray
        assert ray.get_runtime_context().gcs_address == ctx.gcs_address
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()
