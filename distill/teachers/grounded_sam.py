"""Grounded-SAM: Grounding DINO boxes refined to masks by SAM (``teacher.name=grounded_sam``).

Grounding DINO (``teacher.model``) finds and labels part boxes exactly as the
``grounding_dino`` teacher does (thresholded, NMS-ed, whole-object boxes dropped); SAM
(``teacher.sam_model``) then turns each box into a mask, keeping the best of its three
multimask outputs by SAM's predicted IoU. Masks are cut to the shape's pixels; a box
whose mask has no shape pixel left is dropped. Scores stay Grounding DINO's (SAM's IoU
head is not a probability that the label is right).
"""

from __future__ import annotations

import numpy as np
import torch

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers.base import ViewPrediction
from distill.teachers.grounding_dino import GroundingDinoTeacher
from distill.teachers.hf_common import (
    TeacherModelError,
    build_prompts,
    finish,
    load_pretrained,
    view_batches,
    view_images,
)
from distill.views import RenderedViews

SAM_BOX_CHUNK = 32
"""Boxes prompted to SAM at once."""


class GroundedSamTeacher:
    """Grounding DINO from ``cfg.model`` + SAM from ``cfg.sam_model`` (hub id, e.g. facebook/sam-vit-base, or a
    local directory)."""

    name = "grounded_sam"
    output = "mask"

    def __init__(self, cfg: TeacherConfig, seed: int = 0) -> None:
        from transformers import SamModel, SamProcessor
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

        if not cfg.sam_model:
            raise TeacherModelError(
                "teacher.sam_model is empty: grounded_sam needs SAM's hub id or local directory "
                "(e.g. teacher.sam_model=facebook/sam-vit-base)"
            )
        self.cfg = cfg
        self.seed = seed
        self.detector = GroundingDinoTeacher(cfg, seed=seed)
        self.device = self.detector.device
        self.sam_processor = SamProcessor(
            image_processor=load_pretrained(SamImageProcessorPil.from_pretrained, cfg.sam_model, "teacher.sam_model")
        )
        self.sam = load_pretrained(SamModel.from_pretrained, cfg.sam_model, "teacher.sam_model")
        self.sam = self.sam.to(self.device).eval()

    def segment(
        self, embedding: torch.Tensor, boxes: np.ndarray, sizes: tuple[torch.Tensor, torch.Tensor]
    ) -> np.ndarray:
        """SAM masks for one view.

        embedding: (1, C, h, w) from ``get_image_embeddings`` · boxes: (M, 4) pixel
        ``x0, y0, x1, y1`` of the view · sizes: the view's ``original_sizes`` and
        ``reshaped_input_sizes`` rows from ``SamProcessor``, each (1, 2) (h, w) → (M, H, W) bool.
        """
        (oh, ow), (rh, rw) = sizes[0][0].tolist(), sizes[1][0].tolist()
        # Boxes into the resized frame SAM's prompt encoder expects (what SamProcessor's
        # input_boxes does; done here so the image is not preprocessed a second time).
        scale = torch.tensor([rw / ow, rh / oh, rw / ow, rh / oh], dtype=torch.float32)
        all_boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
        out = []
        # Chunks bound the memory of full-size masks (a few MB per box at 800²).
        for start in range(0, len(all_boxes), SAM_BOX_CHUNK):
            input_boxes = all_boxes[start : start + SAM_BOX_CHUNK][None].to(self.device)  # (1, m, 4)
            with torch.inference_mode():
                outputs = self.sam(image_embeddings=embedding, input_boxes=input_boxes, multimask_output=True)
            # pred_masks: (1, m, 3, h, w) logits; keep the best of 3 by predicted IoU before
            # upsampling to the view → (m, H, W) bool.
            best = outputs.iou_scores.float().argmax(dim=-1)  # (1, m)
            logits = torch.take_along_dim(outputs.pred_masks.float(), best[..., None, None, None], dim=2)
            masks = self.sam_processor.post_process_masks(logits.cpu(), *sizes)[0]  # (m, 1, H, W)
            out.append(masks[:, 0].numpy().astype(bool))
        h, w = int(oh), int(ow)
        return np.concatenate(out) if out else np.zeros((0, h, w), bool)

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One filtered ``ViewPrediction`` (boxes and masks) per view of ``shape``."""
        prompts = build_prompts(shape.part_names, shape.category, self.cfg.prompt_template)
        shape_masks = views.shape_masks
        size = views.image_size
        boxed = [finish(p, shape_masks[v], self.cfg) for v, p in enumerate(self.detector.detect(views, prompts))]
        out: list[ViewPrediction] = [ViewPrediction.empty(size, with_masks=True) for _ in boxed]
        todo = [v for v, p in enumerate(boxed) if len(p)]  # SAM's encoder only where there are boxes
        for chunk in view_batches(len(todo), self.cfg.batch_size):
            idx = [todo[i] for i in chunk]
            images = view_images(views, idx)
            enc = self.sam_processor(images=images, return_tensors="pt")
            with torch.inference_mode():
                embeddings = self.sam.get_image_embeddings(enc["pixel_values"].to(self.device))
            for j, v in enumerate(idx):
                pred = boxed[v]
                sizes = (enc["original_sizes"][j : j + 1], enc["reshaped_input_sizes"][j : j + 1])
                masks = self.segment(embeddings[j : j + 1], pred.boxes, sizes) & shape_masks[v]
                keep = masks.any(axis=(1, 2))
                full = ViewPrediction(pred.labels, pred.scores, pred.boxes, masks)
                out[v] = finish(full.select(keep), shape_masks[v], self.cfg)
        return out


__all__ = ["GroundedSamTeacher"]
