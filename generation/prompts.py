"""Text prompts for text-to-3D generation: templates × styles, per category and index.

``make_prompt(category, index, seed, templates, styles)`` fills one template with one
style and the category's noun. The choice is a seeded permutation of all (template,
style) pairs, redrawn every cycle of ``len(templates) · len(styles)`` indices, so:

* it is deterministic in (seed, category, index) alone (any worker, any order);
* consecutive indices of a category cover every pair once before any repeats.

Templates are ``str.format`` strings over ``{category}`` (required) and ``{style}``.
"""

from __future__ import annotations

import re
import string

import numpy as np

from distill.sampling import derive_seed

DEFAULT_TEMPLATES: tuple[str, ...] = ("a {style} {category}", "a 3d model of a {style} {category}")
"""= ``GenerationConfig.templates``' default (a test keeps them equal)."""
DEFAULT_STYLES: tuple[str, ...] = (
    "modern",
    "wooden",
    "metal",
    "simple",
    "vintage",
    "futuristic",
    "minimalist",
    "sturdy",
)
"""= ``GenerationConfig.styles``' default."""

CATEGORY_NOUNS: dict[str, str] = {
    "earphone": "pair of headphones",
    "fourleg": "four-legged animal",
    "mech": "mechanical part",
    "bust": "bust sculpture",
    "plier": "pair of pliers",
    "glasses": "pair of glasses",
}
"""Category names that read badly as nouns (case-insensitive key); others are lowercased."""

_FIELDS = {"category", "style"}
# "a airplane" → "an airplane" (a vowel letter is a good enough guess for these nouns).
_ARTICLE = re.compile(r"\b([Aa]) ([aeiouAEIOU])")


def category_noun(category: str) -> str:
    """``"Airplane"`` → ``"airplane"``; ``"FourLeg"`` → ``"four-legged animal"``."""
    return CATEGORY_NOUNS.get(category.casefold(), category.lower())


def check_templates(templates: list[str] | tuple[str, ...], styles: list[str] | tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``generation.templates``/``generation.styles`` when unusable."""
    if not templates:
        raise ValueError("generation.templates is empty: give at least one template such as 'a {style} {category}'")
    for t in templates:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(t) if name is not None}
        except ValueError as e:
            raise ValueError(f"generation.templates: {t!r} is not a format string ({e})") from None
        if "category" not in fields:
            raise ValueError(f"generation.templates: {t!r} must contain '{{category}}'")
        if fields - _FIELDS:
            raise ValueError(
                f"generation.templates: {t!r} uses {sorted(fields - _FIELDS)}; only {{category}}, {{style}}"
            )
        if "style" in fields and not styles:
            raise ValueError(f"generation.templates: {t!r} needs a style but generation.styles is empty")


def make_prompt(
    category: str,
    index: int,
    seed: int,
    templates: list[str] | tuple[str, ...] = DEFAULT_TEMPLATES,
    styles: list[str] | tuple[str, ...] = DEFAULT_STYLES,
) -> str:
    """The prompt of instance ``index`` of ``category`` (see the module docstring)."""
    check_templates(templates, styles)
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    style_list = list(styles) or [""]
    pairs = len(templates) * len(style_list)
    cycle, slot = divmod(int(index), pairs)
    rng = np.random.default_rng(derive_seed(seed, f"prompt/{category.casefold()}/{cycle}"))
    pick = int(rng.permutation(pairs)[slot])
    template, style = templates[pick // len(style_list)], style_list[pick % len(style_list)]
    text = " ".join(template.format(category=category_noun(category), style=style).split())
    return _ARTICLE.sub(r"\1n \2", text)
