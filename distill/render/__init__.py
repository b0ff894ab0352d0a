"""Multi-view rendering of one shape and the visibility of its student points (CPU).

``render_shape(shape, cfg)`` → ``RenderedViews``: V views of a grey Lambert-shaded surface
(headlight + ambient) on white, the depth map, the ground-truth part under each pixel,
and where each of the N student points lands and whether it is visible. It composes, in
the manner of pytorch3d's ``PointsRenderer(rasterizer, compositor)``:

- a rasteriser, by geometry and ``render.backend``: ``raycast`` (meshes, Embree),
  ``zbuffer`` (meshes, torch; the fallback without embreex), ``splat`` (point clouds);
- ``visibility`` of the student points (meshes: along each point's own ray; clouds:
  hidden-point removal or a depth test against the splats);
- ``shading`` (two-sided Lambert, grey on white);

in ``renderer``. Each fast kernel has its slow, obviously correct reference beside it
(``*_reference``, docs/design.md §5.3), which the tests check it against.

Speed and quality by image size (``python bench/render.py speed`` / ``quality``): see
docs/results.md, "Render speed"; quality does not need 800² renders, so 320² is the
default. Torch uses many threads by default; on a busy machine
its thread synchronisation made the splatting 30× slower (1.5 s vs 0.05 s at 256²), so
run rendering with one torch thread per process (Ray CPU tasks already do).
"""

from distill.render.raycast import embree_available, raycast_mesh_embree
from distill.render.renderer import Fragments, mesh_rasterizer, rasterize, render_shape, resolve_backend
from distill.render.splat import MIN_SPLAT_PX, splat_points
from distill.render.visibility import HPR_GAMMA, hidden_point_removal, mesh_point_visibility, point_visibility
from distill.render.zbuffer import rasterize_mesh_torch

__all__ = [
    "HPR_GAMMA",
    "MIN_SPLAT_PX",
    "Fragments",
    "embree_available",
    "hidden_point_removal",
    "mesh_point_visibility",
    "mesh_rasterizer",
    "point_visibility",
    "rasterize",
    "rasterize_mesh_torch",
    "raycast_mesh_embree",
    "render_shape",
    "resolve_backend",
    "splat_points",
]
