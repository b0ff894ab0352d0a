"""Shape generators: a registry of ``fn(category, index, seed, num_points) -> Shape``.

``procedural`` (the embedded corpus) is always there; heavier generators (``shap_e``,
text-to-3D with diffusers) register themselves from their own module, imported only by
the code that needs them, so importing ``generation`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from distill.records import Shape
from generation import procedural

Generator = Callable[[str, int, int, int], Shape]
"""``(category, index, seed, num_points) -> Shape``; deterministic in its arguments."""

GENERATORS: dict[str, Generator] = {"procedural": procedural.make_shape}

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
