"""What the Hugging Face teachers share: device, loading, prompts, phrase → part, boxes.

Pure functions except ``load_pretrained`` (reads a model directory or the hub cache).
The teachers themselves live in ``grounding_dino.py``, ``owlv2.py``, ``clipseg.py`` and
``grounded_sam.py``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from distill.config import TeacherConfig
from distill.teachers.base import ViewPrediction, filter_predictions
from distill.views import RenderedViews

T = TypeVar("T")


class TeacherModelError(OSError):
    """A teacher's model cannot be loaded; the message names the config key and the fix."""


# ---------------------------------------------------------------------------- device / loading


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("teacher.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(device)


def _looks_local(source: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative, home, or >1 slash."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def check_model_source(source: str, key: str = "teacher.model") -> str:
    """Validate a hub id or local directory before any loading; returns it (``~`` expanded).

    Raises ``TeacherModelError`` naming ``key`` when it is empty or names a local
    directory that does not exist (instead of a confusing hub lookup of a path).
    """
    if not source:
        raise TeacherModelError(f"{key} is empty: set it to a hub id or a local model directory")
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded) or _looks_local(source):
        raise TeacherModelError(
            f"{key}={source!r}: no such model directory (expected a folder written by save_pretrained, "
            "holding config.json and the weights)"
        )
    return source


def load_pretrained(loader: Callable[..., T], source: str, key: str = "teacher.model", **kwargs) -> T:
    """``loader(source, **kwargs)`` (a ``from_pretrained``), with errors that name ``key``.

    A hub id that is not in the local cache and cannot be fetched (offline machine, typo,
    gated repo) becomes a ``TeacherModelError`` saying what to do.
    """
    source = check_model_source(source, key)
    local = os.path.isdir(source)
    if not local and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        # Read at call time (huggingface_hub reads it once at import): fail at once, no retries.
        kwargs.setdefault("local_files_only", True)
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as e:
        what = getattr(loader, "__qualname__", str(loader))
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if local:
            fix = "is it a complete save_pretrained folder of the right model type?"
        else:
            fix = (
                "no local directory of that name, not in the local Hugging Face cache and not downloadable "
                "here. On a machine without internet, "
                "download it elsewhere (huggingface-cli download ID --local-dir DIR), copy DIR here and set "
                f"{key}=DIR (HF_HUB_OFFLINE=1 makes this error immediate instead of after retries)"
            )
        raise TeacherModelError(f"{key}={source!r}: cannot load {what} ({cause}); {fix}") from e


# ---------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompts:
    """One prompt per part, and where the part's own words sit in it.

    texts: P prompts · part_spans: P ``(start, end)`` character spans of the part name
    inside its prompt (so template words such as "of a chair", shared by all prompts,
    can be told apart from the words that name the part) · part_names: the P normalised
    part names.
    """

    texts: list[str]
    part_spans: list[tuple[int, int]]
    part_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def clean_name(name: str) -> str:
    """A part or category name as words: lower case, ``_``/``-`` as spaces, single spaces."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def build_prompts(part_names: Sequence[str], category: str, template: str = "{part}") -> Prompts:
    """Fill ``template`` once per part: ``{part}`` → the part name, ``{category}`` → the category.

    Names are cleaned (``clean_name``); the template's own words are kept as written.
    Only the first ``{part}`` is tracked as the part's span (a second one is filled too).
    """
    if "{part}" not in template:
        raise ValueError(f"teacher.prompt_template={template!r} must contain '{{part}}'")
    if not part_names:
        raise ValueError("build_prompts: no part names")
    cat = clean_name(category)
    head, _, tail = template.partition("{part}")
    head = head.replace("{category}", cat)
    texts, spans, names = [], [], []
    for raw in part_names:
        part = clean_name(raw)
        if not part:
            raise ValueError(f"build_prompts: part name {raw!r} of {category!r} has no words")
        full = head + part + tail.replace("{category}", cat).replace("{part}", part)
        start = len(head) - (len(full) - len(full.lstrip()))  # the strip below shifts the span
        texts.append(full.strip())
        spans.append((start, start + len(part)))
        names.append(part)
    return Prompts(texts, spans, names)


def detection_caption(prompts: Prompts) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's caption ``"a. b. c."`` and each part name's character span in it.

    Dots inside prompts would split phrases, so they become spaces (same length: spans hold).
    """
    pieces, spans, pos = [], [], 0
    for text, (s, e) in zip(prompts.texts, prompts.part_spans):
        text = text.replace(".", " ")
        pieces.append(text)
        spans.append((pos + s, pos + e))
        pos += len(text) + 2  # ". "
    return ". ".join(pieces) + ".", spans


def token_parts(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which part each token names: (T,) int64, −1 for special, separator and template tokens.

    offsets: T ``(start, end)`` character offsets of the tokens (``return_offsets_mapping``;
    ``(0, 0)`` for special tokens) · spans: P ``(start, end)`` character spans of the parts.
    """
    out = np.full(len(offsets), -1, np.int64)
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        for p, (s, e) in enumerate(spans):
            if a < e and b > s:  # overlapping, so "##s" of "legs" stays with "leg"
                out[t] = p
                break
    return out


# ---------------------------------------------------------------------------- phrase → part

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    """Lower-case words, WordPiece ``##`` joins undone, a plural ``s`` dropped."""
    text = re.sub(r"\s*##", "", text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in _WORD.findall(text)]


def match_phrase(phrase: str, part_names: Sequence[str], prompts: Sequence[str] = ()) -> int | None:
    """The part a detector's phrase names, or None when it names none or is ambiguous.

    Exact match (case, punctuation, ``##`` and plural ``s`` ignored) of the part name
    first, then of the full prompt; otherwise the part whose name shares the largest
    Dice overlap of words with the phrase, if that best part is unique. Words in every
    part name (the "leg" of "front leg"/"back leg") do not discriminate and are ignored
    in the overlap, so "leg" alone is ambiguous → None.
    """
    words = _words(phrase)
    if not words:
        return None
    names = [_words(n) for n in part_names]
    for candidates in (names, [_words(p) for p in prompts]):
        for i, cand in enumerate(candidates):
            if cand == words:
                return i
    common = set.intersection(*(set(n) for n in names)) if len(names) > 1 else set()
    bag = Counter(w for w in words if w not in common)
    best, best_i, tie = 0.0, None, False
    for i, name in enumerate(names):
        own = Counter(w for w in name if w not in common)
        shared = sum((bag & own).values())
        if shared == 0:
            continue
        dice = 2 * shared / (sum(bag.values()) + sum(own.values()))
        if dice > best + 1e-9:
            best, best_i, tie = dice, i, False
        elif abs(dice - best) <= 1e-9:
            tie = True
    return None if tie else best_i


# ---------------------------------------------------------------------------- boxes, batches

MIN_BOX_PIXELS = 1.0


def view_batches(num_views: int, batch_size: int) -> Iterator[range]:
    """Consecutive ranges of at most ``batch_size`` view indices covering ``range(num_views)``."""
    if batch_size < 1:
        raise ValueError(f"teacher.batch_size={batch_size} must be >= 1")
    for start in range(0, num_views, batch_size):
        yield range(start, min(start + batch_size, num_views))


def view_images(views: RenderedViews, idx: Sequence[int]) -> list[np.ndarray]:
    """The views' images as a list of (H, W, 3) uint8 arrays (what the processors take)."""
    images = views.images
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"views.images must be (V, H, W, 3), got {images.shape}")
    return [np.ascontiguousarray(images[v], dtype=np.uint8) for v in idx]


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(M, 4) ``x0, y0, x1, y1`` → float32 clipped to the image, corners ordered."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    x0, x1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    y0, y1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    out = np.stack([np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height)], 1)
    return out.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) × (K, 4) boxes → (M, K) IoU (0 where both are empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Class-wise non-maximum suppression: (M,) bool keep mask; ``iou >= 1`` keeps all.

    A box is dropped when a higher-scoring box of the same label overlaps it with IoU > iou.
    """
    keep = np.ones(len(scores), bool)
    if iou >= 1.0 or len(scores) < 2:
        return keep
    ious = box_iou(boxes, boxes)
    order = np.argsort(-scores, kind="stable")
    for rank, i in enumerate(order):
        if not keep[i]:
            continue
        later = order[rank + 1 :]
        keep[later[(labels[later] == labels[i]) & (ious[i, later] > iou)]] = False
    return keep


def finish(pred: ViewPrediction, shape_mask: np.ndarray, cfg: TeacherConfig) -> ViewPrediction:
    """Dtypes fixed, then the shared rules (score threshold, whole-object boxes)."""
    pred = ViewPrediction(
        np.asarray(pred.labels, np.int64).reshape(-1),
        np.clip(np.asarray(pred.scores, np.float32).reshape(-1), 0.0, 1.0),
        None if pred.boxes is None else np.asarray(pred.boxes, np.float32).reshape(-1, 4),
        None if pred.masks is None else np.asarray(pred.masks, bool),
    )
    return filter_predictions(pred, shape_mask, cfg.score_threshold, cfg.whole_object_fraction)


def detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_size: int, cfg: TeacherConfig
) -> ViewPrediction:
    """Raw detections of one view → clipped to the image, thresholded, NMS-ed, best first (no shape rules yet).

    boxes: (M, 4) pixel ``x0, y0, x1, y1`` · scores: (M,) in [0, 1] · labels: (M,) part
    indices, −1 for detections naming no part (dropped).
    """
    boxes = clip_boxes(boxes, image_size, image_size)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    # Threshold before NMS: the survivors are the same, with less work. Boxes under a pixel
    # wide or high (often a box pushed off the image and clipped) cover no point: dropped.
    big = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_PIXELS) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_PIXELS)
    keep = (labels >= 0) & (scores >= cfg.score_threshold) & big
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = nms(boxes, scores, labels, cfg.nms_iou)
    order = np.argsort(-scores[keep], kind="stable")
    return ViewPrediction(labels[keep][order], scores[keep][order], boxes[keep][order])


__all__ = [
    "Prompts",
    "TeacherModelError",
    "box_iou",
    "build_prompts",
    "check_model_source",
    "clean_name",
    "clip_boxes",
    "detection_caption",
    "detections",
    "finish",
    "load_pretrained",
    "match_phrase",
    "nms",
    "resolve_device",
    "token_parts",
    "view_batches",
    "view_images",
]
