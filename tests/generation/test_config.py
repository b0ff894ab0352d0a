import pytest

from distill.config import ConfigError
from generation import GENERATORS, LAZY_GENERATORS
from generation.config import GenerationConfig


def test_generator_names_are_the_registry():
    for name in (*GENERATORS, *LAZY_GENERATORS):
        assert GenerationConfig(name=name).name == name
    with pytest.raises(ConfigError, match="generation.name='dalle' is not one of procedural, shap_e"):
        GenerationConfig(name="dalle")


def test_checks_name_the_key():
    with pytest.raises(ConfigError, match="generation.grid_size"):
        GenerationConfig(grid_size=4)
