"""Grounding DINO open-set detector as a box teacher (``teacher.name=grounding_dino``).

The parts go in as one caption ``"p1. p2. p3."``; each of the model's queries scores a
box against every caption token. A box's label is the part whose *name tokens* (found
from the tokenizer's character offsets, so "nose cone", or "front leg" beside "back leg",
are told apart exactly, and template words like "of a chair" count for no part) score
highest; its score is that token score. Tokenizers without offsets fall back to the
post-processor's decoded phrase, matched to a part by ``match_phrase``.
"""

from __future__ import annotations

import numpy as np
import torch

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers.base import ViewPrediction
from distill.teachers.hf_common import (
    Prompts,
    build_prompts,
    detection_caption,
    detections,
    finish,
    load_pretrained,
    match_phrase,
    resolve_device,
    token_parts,
    view_batches,
    view_images,
)
from distill.views import RenderedViews

TEXT_THRESHOLD = 0.25
"""Fallback path only: tokens scoring above this form a box's phrase (Grounding DINO's default)."""


def part_scores(probs: torch.Tensor, token_part: np.ndarray, num_parts: int) -> torch.Tensor:
    """Per-part score of each box: the best probability over that part's name tokens.

    probs: (B, Q, L) sigmoid token scores (L ≥ T, positions past the text are 0) ·
    token_part: (T,) part index of each caption token, −1 for none → (B, Q, P) in [0, 1]
    (0 for a part with no token, e.g. cut off by the text length limit).
    """
    b, q, _ = probs.shape
    out = probs.new_zeros((b, q, num_parts))
    for p in range(num_parts):
        tokens = torch.as_tensor(np.nonzero(token_part == p)[0], device=probs.device)
        if len(tokens):
            out[..., p] = probs[..., tokens].amax(dim=-1)
    return out


class GroundingDinoTeacher:
    """``GroundingDinoForObjectDetection`` from ``cfg.model`` (hub id, e.g. IDEA-Research/grounding-dino-tiny,
    or a local directory)."""

    name = "grounding_dino"
    output = "box"

    def __init__(self, cfg: TeacherConfig, seed: int = 0) -> None:
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil,
        )

        self.cfg = cfg
        self.seed = seed  # inference is deterministic; kept for the registry's signature
        self.device = resolve_device(cfg.device)
        self.processor = GroundingDinoProcessor(
            image_processor=load_pretrained(GroundingDinoImageProcessorPil.from_pretrained, cfg.model),
            tokenizer=load_pretrained(AutoTokenizer.from_pretrained, cfg.model),
        )
        self.model = load_pretrained(GroundingDinoForObjectDetection.from_pretrained, cfg.model)
        self.model = self.model.to(self.device).eval()
        self.max_text_len = int(self.model.config.max_text_len)

    def _token_parts(self, caption: str, spans: list[tuple[int, int]]) -> np.ndarray | None:
        """(T,) part index per caption token, or None when the tokenizer gives no offsets."""
        try:
            enc = self.processor.tokenizer(
                caption, return_offsets_mapping=True, truncation=True, max_length=self.max_text_len
            )
        except (NotImplementedError, ValueError, TypeError):
            return None
        offsets = enc.get("offset_mapping")
        return None if offsets is None else token_parts(offsets, spans)

    def detect(self, views: RenderedViews, prompts: Prompts) -> list[ViewPrediction]:
        """Boxes per view, thresholded and NMS-ed but not yet filtered for whole-object boxes."""
        caption, spans = detection_caption(prompts)
        token_part = self._token_parts(caption, spans)
        size = views.image_size
        out: list[ViewPrediction] = []
        for idx in view_batches(views.num_views, self.cfg.batch_size):
            inputs = self.processor(
                images=view_images(views, idx),
                text=[caption] * len(idx),
                truncation=True,
                max_length=self.max_text_len,
                return_tensors="pt",
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                outputs = self.model(**inputs)
            if token_part is not None:
                out += self._from_spans(outputs, token_part, len(prompts), size)
            else:
                out += self._from_phrases(outputs, inputs["input_ids"], prompts, size)
        return out

    def _from_spans(self, outputs, token_part: np.ndarray, num_parts: int, size: int) -> list[ViewPrediction]:
        probs = outputs.logits.float().sigmoid()  # (B, Q, L)
        scores, labels = part_scores(probs, token_part, num_parts).max(dim=-1)  # (B, Q)
        # pred_boxes: (B, Q, 4) normalised cx, cy, w, h → pixel corners (square views).
        cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * size
        return [
            detections(boxes[i].cpu().numpy(), scores[i].cpu().numpy(), labels[i].cpu().numpy(), size, self.cfg)
            for i in range(len(boxes))
        ]

    def _from_phrases(self, outputs, input_ids: torch.Tensor, prompts: Prompts, size: int) -> list[ViewPrediction]:
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids,
            threshold=-1.0,
            text_threshold=TEXT_THRESHOLD,
            target_sizes=[(size, size)] * len(input_ids),
        )
        preds = []
        for r in results:
            labels = [match_phrase(t, prompts.part_names, prompts.texts) for t in r["text_labels"]]
            preds.append(
                detections(
                    r["boxes"].float().cpu().numpy(),
                    r["scores"].float().cpu().numpy(),
                    np.array([-1 if p is None else p for p in labels], np.int64),
                    size,
                    self.cfg,
                )
            )
        return preds

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One filtered ``ViewPrediction`` (boxes) per view of ``shape``."""
        prompts = build_prompts(shape.part_names, shape.category, self.cfg.prompt_template)
        masks = views.shape_masks
        return [finish(p, masks[v], self.cfg) for v, p in enumerate(self.detect(views, prompts))]


__all__ = ["GroundingDinoTeacher", "part_scores"]
