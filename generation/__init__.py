"""Shape generators: a registry of ``fn(category, index, seed, num_points) -> Shape``.

``procedural`` (the embedded corpus) is always there; heavier generators (``shap_e``,
text-to-3D with diffusers) register themselves from their own module, imported only by
the code that needs them, so importing ``generation`` stays cheap.

Importing ``generation`` also registers the ``data.source=procedural`` reader with
``distill.readers`` (``generation.procedural.reader``): distill never imports generation,
so the layer that lists items (``cluster.passes.ingest``) imports this package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from distill.readers import register_reader
from distill.records import Shape
from generation import procedural
from generation.procedural import reader as procedural_reader

Generator = Callable[[str, int, int, int], Shape]
"""``(category, index, seed, num_points) -> Shape``; deterministic in its arguments."""

GENERATORS: dict[str, Generator] = {"procedural": procedural.make_shape}
register_reader("procedural", procedural_reader.read)

# Generators that register themselves when their (heavy) module is imported.
LAZY_GENERATORS: dict[str, str] = {"shap_e": "generation.shap_e"}


def register_generator(name: str, fn: Generator) -> None:
    """Add (or replace) generator ``name``."""
    if not name:
        raise ValueError("generator name must be non-empty")
    GENERATORS[name] = fn


def generate(name: str, category: str, index: int, seed: int, num_points: int = 2048) -> Shape:
    """Instance ``index`` of ``category`` from generator ``name``."""
    if name not in GENERATORS and name in LAZY_GENERATORS:
        importlib.import_module(LAZY_GENERATORS[name])
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; registered: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name](category, index, seed, num_points)
