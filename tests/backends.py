"""The same config on either side of ``cluster.runtime.connect.use_ray``: tests run a pass both ways."""

from dataclasses import replace

from cluster.config import Config


def on_ray(cfg: Config) -> Config:
    """``cfg`` with ``cluster.backend=ray`` (a test's ``ray_local`` fixture has joined Ray)."""
    return replace(cfg, cluster=replace(cfg.cluster, backend="ray"))


def here(cfg: Config) -> Config:
    """``cfg`` with ``cluster.backend=local``: this process, no Ray."""
    return replace(cfg, cluster=replace(cfg.cluster, backend="local"))
