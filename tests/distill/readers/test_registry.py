"""The reader registry (distill/readers/registry.py): the one list of source names, dispatch."""

from __future__ import annotations

import pytest

from distill import config
from distill.config import DataConfig, MixEntry
from distill.readers import iter_items, register_reader, registry


def test_the_registry_is_the_one_list_of_source_names():
    assert registry.SOURCES == ("procedural", "psb", "shapenetpart", "files", "mix")
    assert config.MIX_SOURCES == registry.MIX_SOURCES == ("procedural", "psb", "shapenetpart", "files")
    assert config.DATA_SOURCES == (*registry.SOURCES, "generated", "table")
    for name in registry.LOCAL_READERS:
        assert callable(registry.reader(name))


def test_sources_without_a_reader():
    with pytest.raises(ValueError, match="no file reader"):
        iter_items(DataConfig(source="table", path="x"), seed=0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        iter_items(DataConfig(source="psb", path="/nonexistent/psb"), seed=0)
    with pytest.raises(ValueError, match="not a provided source"):
        register_reader("psb", lambda data, seed: iter(()))


def test_procedural_needs_its_provider(monkeypatch):
    # distill never imports generation: until it is imported, procedural has no reader.
    monkeypatch.setattr(registry, "_REGISTERED", {})
    with pytest.raises(ValueError, match="served by generation, which registers its reader"):
        iter_items(DataConfig(source="procedural"), seed=0)
    mix = DataConfig(source="mix", mix=[MixEntry(source="procedural")])
    with pytest.raises(ValueError, match=r"data.mix\[0\] \(procedural\): .*served by generation"):
        iter_items(mix, seed=0)
