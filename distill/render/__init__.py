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
(``*_reference``, DESIGN §5.3), which the tests check it against.

Speed (``python bench/render.py speed``; one core, torch on one thread as in a Ray CPU
task; Bust 301, 18,500 faces / 2,048 points; 10 PartSLIP views; CPU seconds per shape
on a shared, loaded 2-core machine; the chain adds the glip_like box teacher,
back-projection and voting, ≈ 0.13 s at 800², 0.02 s at 320²):

=====  =================  ==============  ===========
size   mesh embree        mesh torch      points
=====  =================  ==============  ===========
800²   0.78 (chain 0.90)  0.93 (1.06)     0.56 (0.70)
512²   0.41 (0.50)        0.52 (0.60)     0.21 (0.30)
320²   0.18–0.25 (0.27)   0.32 (0.35)     0.10 (0.12)
=====  =================  ==============  ===========

Quality does not need 800² (``python bench/render.py quality``, all 190 Labeled-PSB shapes,
per-shape mIoU of ``vote``): clean boxes 78.1 at 320² vs 78.0 at 800², glip_like boxes
44.0 vs 44.0; masks gain a little with size (glip_like 58.2 vs 61.8) because the
simulated mask error is in pixels. Torch uses many threads by default; on a busy machine
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
