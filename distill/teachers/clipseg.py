"""CLIPSeg text-prompted segmenter as a mask teacher (``teacher.name=clipseg``).

CLIPSeg gives, for each (view, part prompt) pair, a low-resolution logit map. We resize
the maps to the view, take sigmoid probabilities, and give each shape pixel to the part
that scores highest there, provided that probability reaches ``teacher.score_threshold``.
One mask per part that wins any pixel; its score is the mean probability over its mask.
Masks carry no boxes: a part mask can legitimately span the whole shape's box (a mug's
body), so the whole-object box rule must not see it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers.base import ViewPrediction
from distill.teachers.hf_common import build_prompts, finish, load_pretrained, resolve_device, view_batches, view_images
from distill.views import RenderedViews


def masks_from_probs(probs: torch.Tensor, shape_mask: torch.Tensor, threshold: float) -> ViewPrediction:
    """Per-pixel winner-take-all over parts → one mask per winning part.

    probs: (P, H, W) float probabilities in [0, 1] at the view's size · shape_mask: (H, W)
    bool pixels of the shape → ``ViewPrediction`` with labels (M,), scores (M,) = mean
    probability over each mask, masks (M, H, W) bool, boxes None; parts winning no shape
    pixel are absent.
    """
    if probs.ndim != 3 or probs.shape[1:] != shape_mask.shape:
        raise ValueError(f"probs {tuple(probs.shape)} must be (P, H, W) with (H, W) = {tuple(shape_mask.shape)}")
    best, winner = probs.max(dim=0)  # (H, W)
    valid = shape_mask & (best >= threshold)
    labels, scores, masks = [], [], []
    for p in torch.unique(winner[valid]).tolist():
        mask = valid & (winner == p)
        labels.append(p)
        scores.append(float(probs[p][mask].mean()))
        masks.append(mask.cpu().numpy())
    h, w = shape_mask.shape
    return ViewPrediction(
        np.asarray(labels, np.int64),
        np.asarray(scores, np.float32),
        None,
        np.stack(masks) if masks else np.zeros((0, h, w), bool),
    )


class ClipSegTeacher:
    """``CLIPSegForImageSegmentation`` from ``cfg.model`` (hub id, e.g. CIDAS/clipseg-rd64-refined, or a local
    directory)."""

    name = "clipseg"
    output = "mask"

    def __init__(self, cfg: TeacherConfig, seed: int = 0) -> None:
        from transformers import AutoTokenizer, CLIPSegForImageSegmentation, CLIPSegProcessor
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

        self.cfg = cfg
        self.seed = seed  # inference is deterministic; kept for the registry's signature
        self.device = resolve_device(cfg.device)
        self.processor = CLIPSegProcessor(
            image_processor=load_pretrained(ViTImageProcessorPil.from_pretrained, cfg.model),
            tokenizer=load_pretrained(AutoTokenizer.from_pretrained, cfg.model),
        )
        self.model = load_pretrained(CLIPSegForImageSegmentation.from_pretrained, cfg.model)
        self.model = self.model.to(self.device).eval()

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One filtered ``ViewPrediction`` (masks) per view of ``shape``."""
        prompts = build_prompts(shape.part_names, shape.category, self.cfg.prompt_template).texts
        num_parts = len(prompts)
        size = views.image_size
        shape_masks = views.shape_masks
        out: list[ViewPrediction] = []
        for idx in view_batches(views.num_views, self.cfg.batch_size):
            images = view_images(views, idx)
            # CLIPSeg pairs image i with text i: every view once per part, view-major.
            inputs = self.processor(
                text=prompts * len(idx),
                images=[im for im in images for _ in range(num_parts)],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                logits = self.model(**inputs).logits.float()  # (B·P, h, w), or (h, w) when B·P = 1
                logits = logits.reshape(len(idx), num_parts, *logits.shape[-2:])
                probs = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).sigmoid()
                for i, v in enumerate(idx):
                    mask = torch.as_tensor(shape_masks[v], device=probs.device)
                    pred = masks_from_probs(probs[i], mask, self.cfg.score_threshold)
                    out.append(finish(pred, shape_masks[v], self.cfg))
        return out


__all__ = ["ClipSegTeacher", "masks_from_probs"]
