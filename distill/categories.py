"""Known categories and their part vocabularies: the one table of part names.

Per dataset (``shapenetpart``, ``psb``, ``procedural``) and category: the part names in
label order (label k = ``part_names[k]``). The tables are constants so that the label
order never depends on which files a run happens to ingest. Beside them (``distill/vocab.py``
reads these): the words a teacher is prompted with, category aliases across datasets, and
each part's *concept*, so a student distilled under one vocabulary is scored on a dataset
with another through an explicit mapping (``distill.vocab.part_mapping``).

The procedural vocabularies live here too (the generator imports them; distill never
imports generation): the eight ShapeNetPart-named categories keep ShapeNetPart's names and
order, the ones made for Labeled PSB categories use PSB's.
"""

from __future__ import annotations

from distill.errors import UnknownNameError

# ShapeNetPart, from shapenet-part-order_meta.json (PartDistill's prompts), except Lamp:
# that file lists 2 parts but the dataset's Lamp labels have 4 (global ids 24..27).
SHAPENETPART_PARTS: dict[str, list[str]] = {
    "Airplane": ["body", "wing", "tail", "engine"],
    "Bag": ["handle", "body"],
    "Cap": ["panels or crown", "visor or peak"],
    "Car": ["roof", "hood", "wheel or tire", "body"],
    "Chair": ["back", "seat", "leg", "armrest"],
    "Earphone": ["earcup", "headband", "data wire"],
    "Guitar": ["head or tuners", "neck", "body"],
    "Knife": ["blade", "handle"],
    "Lamp": ["base", "lampshade", "canopy", "tube"],
    "Laptop": ["keyboard", "screen or monitor"],
    "Motorbike": ["gas tank", "seat", "wheel", "handle", "headlight", "frame"],
    "Mug": ["handle", "cup"],
    "Pistol": ["frame", "grip", "trigger"],
    "Rocket": ["body", "fin", "nose cone"],
    "Skateboard": ["wheel", "deck", "belt for foot"],
    "Table": ["tabletop", "leg", "drawer"],
}

# synsetoffset2category.txt.
SHAPENETPART_SYNSETS: dict[str, str] = {
    "Airplane": "02691156",
    "Bag": "02773838",
    "Cap": "02954340",
    "Car": "02958343",
    "Chair": "03001627",
    "Earphone": "03261776",
    "Guitar": "03467517",
    "Knife": "03624134",
    "Lamp": "03636649",
    "Laptop": "03642806",
    "Motorbike": "03790512",
    "Mug": "03797390",
    "Pistol": "03948459",
    "Rocket": "04099429",
    "Skateboard": "04225987",
    "Table": "04379243",
}


def _pid_starts() -> dict[str, int]:
    # Global part ids run through the categories in this order (shapenet_pid_start.json).
    starts, k = {}, 0
    for name, parts in SHAPENETPART_PARTS.items():
        starts[name] = k
        k += len(parts)
    return starts


SHAPENETPART_PID_START: dict[str, int] = _pid_starts()
"""First global part id of each ShapeNetPart category (category-local label = global − start)."""

# Labeled PSB (Kalogerakis et al. 2010): per category, the part names of the dataset's
# documented vocabulary. The sorted names the 190 development meshes in shared/data use,
# plus the documented names those meshes happen to lack, appended so that the labels of
# the others keep their ids: Airplane ``engine`` (3 of the full set's 20 airplanes).
PSB_PARTS: dict[str, list[str]] = {
    "Airplane": ["body", "rudder", "stabilizer", "wing", "engine"],
    "Ant": ["antenna", "back", "head", "leg", "torso"],
    "Armadillo": [
        "back",
        "ear",
        "foot",
        "hand",
        "head",
        "lowerArm",
        "lowerLeg",
        "tail",
        "torso",
        "upperArm",
        "upperLeg",
    ],
    "Bearing": ["base1", "base2", "bigroller", "mediumroller", "smallroller", "tinyroller"],
    "Bird": ["body", "head", "leg", "tail", "wing"],
    "Bust": ["background", "ear", "eye", "face", "hair", "mouth", "neck", "nose"],
    "Chair": ["arm", "backsupport", "leg", "support"],
    "Cup": ["body", "handle"],
    "Fish": ["body", "fin", "tail"],
    "FourLeg": ["earhorn", "head", "leg", "neck", "tail", "torso"],
    "Glasses": ["lens", "middle", "skeleton"],
    "Hand": ["finger1", "finger2", "finger3", "finger4", "hand", "thumb"],
    "Human": ["foot", "hand", "head", "lowerarm", "lowerleg", "torso", "upperarm", "upperleg"],
    "Mech": ["bigbox", "bigcylinder", "mediumcylinder", "smallbox", "smallcylinder"],
    "Octopus": ["body", "leg"],
    "Plier": ["center", "edge", "handle"],
    "Table": ["leg", "support"],
    "Teddy": ["ear", "hand", "head", "leg", "torso"],
    "Vase": ["base", "body", "handle", "spout", "top"],
}

PROCEDURAL_SNP_CATEGORIES = ("Airplane", "Car", "Chair", "Guitar", "Lamp", "Rocket", "Skateboard", "Table")
"""The embedded default corpus: ShapeNetPart categories, names and label order."""
PROCEDURAL_PSB_CATEGORIES = ("Cup", "Glasses", "Human", "Plier", "Vase")
"""Procedural categories made for Labeled PSB categories: PSB's names and label order."""
PROCEDURAL_PARTS: dict[str, list[str]] = {
    **{c: list(SHAPENETPART_PARTS[c]) for c in PROCEDURAL_SNP_CATEGORIES},
    **{c: list(PSB_PARTS[c]) for c in PROCEDURAL_PSB_CATEGORIES},
}
"""Part names in label order of every procedural category."""

TABLES: dict[str, dict[str, list[str]]] = {
    "shapenetpart": SHAPENETPART_PARTS,
    "psb": PSB_PARTS,
    "procedural": PROCEDURAL_PARTS,
}
"""Known tables by source name. Sources without a table of their own (files, generated)
look in ShapeNetPart first, then Labeled PSB, then the procedural one."""


def _lookup(table: dict[str, list[str]], category: str) -> list[str] | None:
    if category in table:
        return list(table[category])
    folded = category.casefold()
    for name, parts in table.items():
        if name.casefold() == folded:
            return list(parts)
    return None


def canonical_name(name: str, available: list[str], what: str = "category") -> str:
    """``name`` matched case-insensitively against ``available`` → the available spelling.

    Raises ``UnknownNameError`` (a ``ValueError``) listing the available names when nothing
    matches.
    """
    if name in available:
        return name
    folded = name.casefold()
    for candidate in available:
        if candidate.casefold() == folded:
            return candidate
    raise UnknownNameError(f"unknown {what} {name!r} — use one of: {', '.join(sorted(available)) or '(none)'}")


def part_names_for(category: str, extra: dict[str, list[str]] | None = None, source: str | None = None) -> list[str]:
    """The part names of ``category`` in label order (case-insensitive lookup).

    Looks in ``extra`` first (e.g. ``{data.category: data.part_names}`` or the procedural
    table), then in the table of ``source`` when it has one (``psb``, ``shapenetpart``),
    else in ShapeNetPart then Labeled PSB. Raises ``ValueError`` naming the category and
    the known ones when none has it.
    """
    if extra:
        found = _lookup(extra, category)
        if found is not None:
            if not found:
                raise ValueError(f"category {category!r}: empty part-name list")
            return found
    tables = [TABLES[source]] if source in TABLES else [SHAPENETPART_PARTS, PSB_PARTS, PROCEDURAL_PARTS]
    for table in tables:
        found = _lookup(table, category)
        if found is not None:
            return found
    known = sorted({*SHAPENETPART_PARTS, *PSB_PARTS, *PROCEDURAL_PARTS, *(extra or {})})
    if source in TABLES:
        known = sorted(tables[0])
    raise UnknownNameError(
        f"unknown category {category!r} (source {source or 'any'}): no part names; known categories: "
        f"{', '.join(known)} — for your own category set data.category and data.part_names"
    )
