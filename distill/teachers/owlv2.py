"""OWLv2 open-vocabulary detector as a box teacher (``teacher.name=owlv2``).

One text query per part; OWLv2 scores every image patch's box against every query, so
a box's label is simply the index of its best query, and class-wise NMS
(``teacher.nms_iou``) removes the many near-duplicate patch boxes.
"""

from __future__ import annotations

import torch

from distill.config import TeacherConfig
from distill.records import Shape
from distill.teachers.base import ViewPrediction
from distill.teachers.hf_common import (
    build_prompts,
    detections,
    finish,
    load_pretrained,
    resolve_device,
    view_batches,
    view_images,
)
from distill.views import RenderedViews


class Owlv2Teacher:
    """``Owlv2ForObjectDetection`` from ``cfg.model`` (hub id, e.g. google/owlv2-base-patch16-ensemble, or a
    local directory)."""

    name = "owlv2"
    output = "box"

    def __init__(self, cfg: TeacherConfig, seed: int = 0) -> None:
        from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2Processor
        from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

        self.cfg = cfg
        self.seed = seed  # inference is deterministic; kept for the registry's signature
        self.device = resolve_device(cfg.device)
        self.processor = Owlv2Processor(
            image_processor=load_pretrained(Owlv2ImageProcessorPil.from_pretrained, cfg.model),
            tokenizer=load_pretrained(AutoTokenizer.from_pretrained, cfg.model),
        )
        self.model = load_pretrained(Owlv2ForObjectDetection.from_pretrained, cfg.model).to(self.device).eval()

    def predict(self, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
        """One filtered ``ViewPrediction`` (boxes) per view of ``shape``."""
        prompts = build_prompts(shape.part_names, shape.category, self.cfg.prompt_template)
        size = views.image_size
        shape_masks = views.shape_masks
        out: list[ViewPrediction] = []
        for idx in view_batches(views.num_views, self.cfg.batch_size):
            images = view_images(views, idx)
            # Queries are padded to the tokenizer's length (16 for OWLv2); truncation keeps long
            # prompts from failing (the end-of-text token the text is pooled at stays last).
            inputs = self.processor(
                text=[prompts.texts] * len(idx), images=images, truncation=True, return_tensors="pt"
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                outputs = self.model(**inputs)
            # threshold −1 keeps every box; ours (>=) is applied in ``detections``. Boxes come
            # back in pixels of the (square-padded) view; label = query index = part index.
            results = self.processor.image_processor.post_process_object_detection(
                outputs, threshold=-1.0, target_sizes=[(size, size)] * len(idx)
            )
            for v, r in zip(idx, results):
                pred = detections(
                    r["boxes"].float().cpu().numpy(),
                    r["scores"].float().cpu().numpy(),
                    r["labels"].cpu().numpy(),
                    size,
                    self.cfg,
                )
                out.append(finish(pred, shape_masks[v], self.cfg))
        return out


__all__ = ["Owlv2Teacher"]
