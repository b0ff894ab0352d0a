from pathlib import Path

import pytest

from cluster.config import CONFIG_DIR, Config, load_config, to_dict
from distill.config import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(["data.num_points=1024", "data.categories=[chair,table]", "seed=3"])
    assert isinstance(cfg, Config)
    assert cfg.data.num_points == 1024 and cfg.data.categories == ["chair", "table"] and cfg.seed == 3
    assert cfg.data.source == "procedural" and cfg.storage.root == "runs"


@pytest.mark.parametrize("preset", sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(["--config", preset])
    assert to_dict(cfg)["run"]


def test_preset_then_override_wins():
    cfg = load_config(["--config", "configs/smoke.yaml", "train.epochs=7"])
    assert cfg.train.epochs == 7 and cfg.run == "smoke"


@pytest.mark.parametrize(
    "arg, key",
    [
        ("data.num_pionts=5", "num_pionts"),
        ("trian.epochs=3", "trian"),
        ("train.epochs=three", "train.epochs"),
        ("data.source=nowhere", "data.source"),
        ("teacher.name=glip9", "teacher.name"),
        ("mode=both", "mode"),
        ("generation.name=dalle", "generation.name"),
        ("cluster.backend=slurm", "cluster.backend"),
        ("storage.rot=x", "storage.rot"),
        ("encoder.mask_ratio=1.5", "encoder.mask_ratio"),
        ("student.freeze_encoder=true", "student.freeze_encoder"),
    ],
)
def test_bad_keys_and_values_name_the_key(arg, key):
    with pytest.raises(ConfigError, match=key):
        load_config([arg])


def test_sections_and_their_order():
    """The composed config's keys, in order: what configs/*.yaml and the JSON summaries hold."""
    assert list(to_dict(Config())) == [
        "run", "seed", "mode", "storage", "data", "eval", "render", "teacher", "student", "train", "encoder",
        "generation", "segment", "cluster", "progress",
    ]  # fmt: skip


def test_bad_arguments():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["--epochs", "3"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(["--config", "nope"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config(["data.source=psb"])
