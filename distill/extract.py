"""One shape → its knowledge units: render → teacher → back-project (docs/design.md §3).

The three steps are separate functions so that a distributed pipeline can run rendering
on CPU workers and the teacher on GPU actors; ``extract_shape`` chains them in-process.
"""

from __future__ import annotations

from distill.backproject import backproject
from distill.config import RenderConfig
from distill.records import KnowledgeUnits, Shape
from distill.teachers.base import Teacher, ViewPrediction
from distill.views import RenderedViews


def render(shape: Shape, cfg: RenderConfig) -> RenderedViews:
    """(step 1, CPU) the shape's views and where its points land."""
    # Imported here: the teacher actors import this module and must not pay for torch's
    # import through the renderer (~2 CPU-s per actor start).
    from distill.render import render_shape

    return render_shape(shape, cfg)


def teach(teacher: Teacher, views: RenderedViews, shape: Shape) -> list[ViewPrediction]:
    """(step 2, GPU when available) the teacher's boxes or masks per view."""
    return teacher.predict(views, shape)


def to_units(views: RenderedViews, preds: list[ViewPrediction], shape: Shape, teacher: Teacher) -> KnowledgeUnits:
    """(step 3, CPU) predictions → knowledge units over the shape's visible points."""
    return backproject(views, preds, shape.shape_id, teacher.name)


def extract_shape(shape: Shape, cfg: RenderConfig, teacher: Teacher) -> KnowledgeUnits:
    """All three steps for one shape in this process."""
    views = render(shape, cfg)
    return to_units(views, teach(teacher, views, shape), shape, teacher)
