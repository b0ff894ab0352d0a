"""The composed configuration of every job, its storage and cluster sections, and its loader.

Layers, later wins: the dataclass defaults → a YAML preset (``--config FILE``) →
``key=value`` command-line overrides (omegaconf dotlist syntax, lists as ``[a,b]``).
A misspelled key or a value of the wrong type fails at load with the key's full name;
the sections' ``__post_init__`` checks then validate values (ranges, choices).

Each section lives with its owner: the method's in ``distill/config.py``, ``generation``
in ``generation/config.py``, ``storage`` and ``cluster`` here. ``Config`` composes all of
them, so it lives in ``cluster``, the one package that may import both others. Pure data:
no IO beyond reading the YAML file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.store.paths import RUN_NAME
from distill.config import (
    ConfigError,
    DataConfig,
    EncoderConfig,
    EvalConfig,
    RenderConfig,
    SegmentConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    check_choice,
)
from generation.config import GenerationConfig


@dataclass
class StorageConfig:
    """Where every artifact of a run lives: ``{root}/{run}/...``."""

    root: str = "runs"
    """A local folder or a URI such as ``s3://bucket/prefix``."""
    endpoint_url: str = ""
    """S3-compatible endpoint (e.g. ``http://127.0.0.1:5000``); empty: the AWS default,
    or ``AWS_ENDPOINT_URL`` from the environment."""
    region: str = ""
    """S3 region; empty: ``AWS_DEFAULT_REGION`` or us-east-1."""


@dataclass
class ClusterConfig:
    """Ray resources per stage. ``address`` empty: ``RAY_ADDRESS`` or a local Ray."""

    backend: str = "auto"
    """auto (Ray when an address is set — ``cluster.address``, ``RAY_ADDRESS`` as under
    ``ray job submit`` — else this process) | ray (start a local Ray if none) | local."""
    address: str = ""
    num_cpus: int = 0
    """CPUs of a local Ray (0: all of this machine's)."""
    render_cpus: float = 1.0
    teacher_actors: int = 1
    extract_layout: str = "auto"
    """split (render tasks → teacher actor pool) | fused (each actor renders, teaches and
    back-projects; the pool grows to every CPU) | auto (fused when teacher_gpus is 0)."""
    teacher_gpus: float = 0.0
    train_workers: int = 1
    min_train_workers: int = 0
    """Elastic training when between 1 and ``train_workers`` - 1: Ray Train runs on as many
    workers as fit (at least this many) and resizes the group when nodes go or come. The
    global batch stays ``train.batch_size × train_workers`` (each of W workers takes 1/W of
    it) and the learning rate is unchanged. 0: always ``train_workers``."""
    gpus_per_worker: float = 0.0
    train_resource: str = ""
    """A custom resource each training worker also asks one unit of (empty: none).
    ray_cluster.yaml's training nodes offer ``train_slot`` (one per GPU) and no other type
    does, so the workers land on, and make the autoscaler start, training nodes — without
    it a 1-GPU worker fits a teacher node too, and the autoscaler would pick those."""
    rescore_actors: int = 1
    """Actors of backward distillation's re-scoring pass (Ray Data batch inference)."""
    rescore_gpus: float = 0.0
    """GPUs per re-scoring actor (0: CPU)."""
    part_shapes: int = 64
    """Most shapes a shape part holds (ingest and generation write one category a part):
    the unit of work of extraction, training reads, re-scoring and evaluation."""
    eval_actors: int = 0
    """Actors of the evaluation and segmentation passes on Ray (0: one per 2 CPUs)."""
    concurrent_students: int = 0
    """With train.per_category: students whose fits run at once on Ray (0: as many as the
    cluster's CPUs (or GPUs) hold worker groups of cluster.train_workers)."""

    def __post_init__(self) -> None:
        check_choice("cluster.backend", self.backend, ("auto", "ray", "local"))
        if not 1 <= self.part_shapes <= 4096:
            raise ConfigError(f"cluster.part_shapes={self.part_shapes} must be in [1, 4096]")
        if self.eval_actors < 0 or self.concurrent_students < 0:
            raise ConfigError("cluster.eval_actors and cluster.concurrent_students must be >= 0 (0: automatic)")
        check_choice("cluster.extract_layout", self.extract_layout, ("auto", "split", "fused"))


@dataclass
class Config:
    """Every job's configuration."""

    run: str = "default"
    """Run name: artifacts go to ``{storage.root}/{run}/``."""
    seed: int = 0
    mode: str = "pre"
    """pre: distil on ``data`` and evaluate on ``eval.data`` | tta: distil on the shapes to
    be segmented."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("pre", "tta"))
        if not RUN_NAME.fullmatch(self.run or ""):
            raise ConfigError(f"run={self.run!r} must be a non-empty name without '/'")
        if self.train.relabel_rounds > 0 and self.eval.units_weight <= 0:
            raise ConfigError(
                f"train.relabel_rounds={self.train.relabel_rounds} relabels with student_units, which "
                "eval.units_weight=0 turns off: set eval.units_weight > 0 (0.1) or train.relabel_rounds=0"
            )


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _resolve_preset(path: str) -> str:
    """``smoke`` or ``configs/smoke.yaml`` or any path → an existing YAML file."""
    candidates = [path, os.path.join(CONFIG_DIR, path), os.path.join(CONFIG_DIR, f"{path}.yaml")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    presets = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
    raise ConfigError(f"--config {path!r}: no such file; presets: {', '.join(presets)}")


def load_config(argv: list[str] | None = None, **overrides: Any) -> Config:
    """Build the typed config from ``[--config FILE] [key=value ...]``.

    ``overrides`` (keyword form, dotted keys written with ``__``: ``data__path=...``) are
    applied last; tests use them.
    """
    argv = list(argv or [])
    preset: str | None = None
    dotlist: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file name or preset name")
            preset = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            preset = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            dotlist.append(arg)
        else:
            raise ConfigError(f"argument {arg!r}: expected --config FILE or key=value")
        i += 1
    dotlist += [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]

    schema = OmegaConf.structured(Config)
    layers = [schema]
    try:
        if preset is not None:
            layers.append(OmegaConf.load(_resolve_preset(preset)))
        layers.append(OmegaConf.from_dotlist(dotlist))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except yaml.YAMLError as e:
        raise ConfigError(f"config {preset or 'overrides'}: not valid YAML ({e})") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        first = str(e).splitlines()[0]
        where = f" (from {preset})" if preset else ""
        raise ConfigError(f"config key {key!r}{where}: {first}") from None


def config_from_dict(d: dict[str, Any]) -> Config:
    """The inverse of ``to_dict`` (validated like a loaded config)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key {getattr(e, 'full_key', '')!r}: {str(e).splitlines()[0]}") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict view of a config (for JSON summaries and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
