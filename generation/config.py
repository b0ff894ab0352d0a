"""The generation section of the configuration (``generation.*``, ``jobs/generate.py``).

Its checks are ``distill.config``'s; the composed ``Config`` is ``cluster/config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.config import ConfigError, check_choice, check_positive
from generation import GENERATORS, LAZY_GENERATORS


@dataclass
class GenerationConfig:
    """Shape generators (procedural or text-to-3D)."""

    name: str = "procedural"
    """procedural | shap_e (``generation.GENERATORS`` and ``LAZY_GENERATORS``)."""
    model: str = ""
    """Hub id or local directory of the text-to-3D model (empty: ``openai/shap-e``)."""
    count: int = 0
    """Shapes per category (0: data.per_category, else 24)."""
    categories: list[str] = field(default_factory=list)
    num_inference_steps: int = 64
    guidance_scale: float = 15.0
    start: int = 0
    """First instance index: instances ``start .. start + count - 1`` of each category."""
    templates: list[str] = field(default_factory=lambda: ["a {style} {category}", "a 3d model of a {style} {category}"])
    """shap_e prompt templates over ``{category}`` and ``{style}`` (generation/prompts.py)."""
    styles: list[str] = field(
        default_factory=lambda: ["modern", "wooden", "metal", "simple", "vintage", "futuristic", "minimalist", "sturdy"]
    )
    part_names: dict[str, list[str]] = field(default_factory=dict)
    """Part names of categories that no known table has (``{category: [part, ...]}``)."""
    batch_size: int = 4
    """shap_e: prompts per actor call (one batched diffusion run)."""
    actors: int = 0
    """shap_e: generator actors (0: cluster.teacher_actors)."""
    gpus: float = -1.0
    """shap_e: GPUs per actor (< 0: cluster.teacher_gpus)."""
    device: str = "auto"
    """shap_e: auto (CUDA when present) | cpu | cuda."""
    grid_size: int = 128
    """shap_e: SDF grid cells a side for marching cubes (the pipeline's own is 128)."""
    filter: bool = True
    """Apply the mesh quality filters (generation/filters.py); rejects go to rejects/."""
    output: str = "shapes"
    """Shape-table folder under ``{storage.root}/{run}/`` that jobs/generate.py writes."""

    def __post_init__(self) -> None:
        check_choice("generation.name", self.name, tuple(dict.fromkeys([*GENERATORS, *LAZY_GENERATORS])))
        check_positive("generation.count", self.count, allow_zero=True)
        check_positive("generation.start", self.start, allow_zero=True)
        check_positive("generation.batch_size", self.batch_size)
        check_positive("generation.num_inference_steps", self.num_inference_steps)
        check_positive("generation.actors", self.actors, allow_zero=True)
        check_choice("generation.device", self.device, ("auto", "cpu", "cuda"))
        if self.grid_size < 8:
            raise ConfigError(f"generation.grid_size={self.grid_size} is too small (>= 8)")
