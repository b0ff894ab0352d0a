"""Multi-view rendering of one shape and the visibility of its student points (CPU).

``render_shape(shape, cfg)`` → ``RenderedViews``: V views of a grey Lambert-shaded surface
(headlight + ambient) on white, the depth map, the ground-truth part under each pixel,
and where each of the N student points lands and whether it is visible.

Meshes
    ``embree``: one ray per pixel centre, first hit → face id (embreex, the Embree wheel
    trimesh uses); depth is recomputed exactly from the hit face's plane. Rays are cast
    only inside each view's projected bounding box of the vertices. We call embreex's
    scene directly rather than ``trimesh.ray.ray_pyembree.RayMeshIntersector``: the
    wrapper converts every ray to float64, normalises and rescales it, which cost 4×
    here (10 views at 800², a 17k-face chair: 2.1 s through trimesh vs 0.62 s direct,
    identical face ids on 99.9996 % of the pixels; the rest are ties on shared edges).
    ``torch``: a z-buffer triangle rasteriser (faces grouped by pixel footprint, one
    ``scatter_reduce(amin)`` over a packed depth|face key per pixel). It is the fallback
    when embreex is not installed; trimesh's own fallback (rtree + numpy) is 100–1000×
    slower and runs out of memory at 256² (DESIGN §7), so it is never used.
Point clouds (no mesh)
    Torch splatting: every point is a screen-facing disk of radius ``point_radius`` (world
    units, projected to pixels, at least 0.71 px so it always covers its own pixel
    centre) at the point's depth, z-buffered the same way.

Visibility of the N student points
    Meshes: a point is visible when it projects inside the image and lies at most
    ``depth_tolerance`` behind the surface seen at its pixel, that surface's depth taken
    on the seen face's plane along the point's own ray (``mesh_point_visibility``; the
    pixel-centre depth alone fails on faces seen at grazing angles). Against one exact
    ray per point (``render_reference``) it agrees on ≥ 98.5 % of (view, point) pairs at
    320² and ≥ 99.9 % away from depth discontinuities.
    Point clouds: 2,048 points are too sparse for a depth test against their own splats
    (holes let hidden points through; on slanted surfaces neighbours' disks hide visible
    ones), so the default is hidden-point removal (``render.point_visibility=hpr``; the
    splat depth test is ``depth``). Against the mesh's visibility of the same points
    (``python bench/render.py visibility``, 38 PSB shapes, 320²): HPR precision 0.917,
    recall 0.890, agreement 0.920; depth test (radius 0.02) 0.752 / 0.701 / 0.765.

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

from __future__ import annotations

import numpy as np
import torch

from distill.cameras import make_cameras, project
from distill.config import RenderConfig
from distill.records import Mesh, Shape
from distill.views import Cameras, RenderedViews

AMBIENT = 0.2
"""Shade = AMBIENT + DIFFUSE · |cos(normal, view ray)|, on a [0, 1] scale."""
DIFFUSE = 0.65
HPR_GAMMA = 2.0
"""Hidden-point removal's radius exponent, chosen by measurement (see the module docstring)."""
MIN_SPLAT_PX = 0.71
"""Smallest splat radius in pixels: just above √½, so a disk covers its own pixel centre."""
_CHUNK = 1 << 21
"""Candidate (face or point, pixel) pairs per rasteriser batch: bounds memory (~60 MB)."""
_NO_HIT = torch.iinfo(torch.int64).max


def embree_available() -> bool:
    """Whether the embreex ray caster can be imported."""
    try:
        import embreex  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` → ``embree`` when embreex imports, else ``torch``; checks the others."""
    if backend == "auto":
        return "embree" if embree_available() else "torch"
    if backend == "embree":
        if not embree_available():
            raise ValueError("render.backend=embree but embreex is not installed (pip install embreex, or use torch)")
        return backend
    if backend == "torch":
        return backend
    if backend == "pytorch3d":
        raise ValueError("render.backend=pytorch3d is not supported: pytorch3d cannot be installed here; use auto")
    raise ValueError(f"render.backend={backend!r} is not one of auto, embree, torch")


def _check_mesh(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"mesh vertices must be (V, 3) with V >= 1, got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"mesh faces must be (F, 3) with F >= 1, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"mesh faces index vertices outside [0, {len(vertices) - 1}]")
    if not np.isfinite(vertices).all():
        raise ValueError("mesh vertices contain NaN or inf")
    return vertices, faces


def _view_windows(vertices: np.ndarray, cams: Cameras) -> np.ndarray:
    """Per view, the pixel window ``(x0, y0, x1, y1)`` (exclusive ends) holding the mesh.

    → (V, 4) int64; empty windows (x1 <= x0) when the mesh is off-screen.
    """
    uv, depth = project(vertices, cams)
    s = cams.image_size
    out = np.zeros((len(cams), 4), np.int64)
    for v in range(len(cams)):
        ok = depth[v] > 0
        if not ok.any():
            continue
        if not ok.all():  # a vertex behind the camera: the projection is unbounded
            out[v] = (0, 0, s, s)
            continue
        lo = np.floor(uv[v].min(0)).astype(np.int64) - 1
        hi = np.ceil(uv[v].max(0)).astype(np.int64) + 1
        out[v] = (max(lo[0], 0), max(lo[1], 0), min(hi[0], s), min(hi[1], s))
    return out


def _camera_planes(vertices: np.ndarray, faces: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Every face's plane in every camera's frame: ``n_cam · p_cam = c``.

    → n_cam: (V, F, 3) float32 (unnormalised normals rotated into the camera) · c: (V, F)
    float32. A pixel ray is ``t · (x, y, −1)`` in camera space (x, y its normalised image
    coordinates), so it meets the plane at depth ``t = c / (n_x x + n_y y − n_z)``.
    """
    tri = np.asarray(vertices, np.float64)[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
    offsets = np.einsum("fk,fk->f", normals, tri[:, 0])
    rot = cams.world_to_cam[:, :3, :3].astype(np.float64)
    n_cam = np.einsum("vij,fj->vfi", rot, normals)
    c = offsets[None, :] - cams.eye.astype(np.float64) @ normals.T  # n · (p − eye)
    return n_cam.astype(np.float32), c.astype(np.float32)


def raycast_mesh_embree(vertices: np.ndarray, faces: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """First hit of every pixel-centre ray with embreex.

    vertices: (P, 3) float32 · faces: (F, 3) int → depth: (V, S, S) float32 (``inf`` on
    background) · face_id: (V, S, S) int64 (−1 on background). Embree gives the face; the
    depth is recomputed on that face's plane (cheaper than asking Embree for distances).
    """
    from embreex import rtcore_scene
    from embreex.mesh_construction import TriangleMesh

    s, nv = cams.image_size, len(cams)
    scene = rtcore_scene.EmbreeScene()
    TriangleMesh(scene=scene, vertices=np.ascontiguousarray(vertices, np.float32), indices=faces.astype(np.int32))
    n_cam, c = _camera_planes(vertices, faces, cams)
    windows = _view_windows(vertices, cams)
    depth = np.full((nv, s, s), np.inf, np.float32)
    face_id = np.full((nv, s, s), -1, np.int64)
    for v in range(nv):
        x0, y0, x1, y1 = windows[v]
        if x1 <= x0 or y1 <= y0:
            continue
        f = float(cams.focal[v])
        cols = (np.arange(x0, x1, dtype=np.float32) + 0.5 - s / 2.0) / f
        rows = -(np.arange(y0, y1, dtype=np.float32) + 0.5 - s / 2.0) / f
        # World direction = R^T (x, y, −1): a sum of R's rows.
        rot = cams.world_to_cam[v, :3, :3]
        dirs = cols[None, :, None] * rot[0] + rows[:, None, None] * rot[1] - rot[2]
        dirs = np.ascontiguousarray(dirs.reshape(-1, 3), np.float32)
        origins = np.ascontiguousarray(np.broadcast_to(cams.eye[v], dirs.shape), np.float32)
        hit = scene.run(origins, dirs).astype(np.int64).reshape(y1 - y0, x1 - x0)
        face_id[v, y0:y1, x0:x1] = hit
        yy, xx = np.nonzero(hit >= 0)
        fid = hit[yy, xx]
        n = n_cam[v, fid]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = c[v, fid] / (n[:, 0] * cols[xx] + n[:, 1] * rows[yy] - n[:, 2])
        # A ray grazing its face's plane has no stable intersection: use the face centroid.
        bad = ~np.isfinite(t) | (t <= 0)
        if bad.any():
            centroid = np.asarray(vertices, np.float64)[faces[fid[bad]]].mean(1)
            t[bad] = (centroid - cams.eye[v]) @ (-rot[2].astype(np.float64))
        depth[v, y0 + yy, x0 + xx] = t
    return depth, face_id


def _float_key(depth: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
    """Pack a positive float32 depth and an id into one int64 whose order is the depth's.

    The bit pattern of a positive float32 orders as the float does, so the amin of the
    key is the nearest candidate, and the low 32 bits say which one it is.
    """
    bits = depth.to(torch.float32).view(torch.int32).to(torch.int64)
    return (bits << 32) | ident.to(torch.int64)


def _unpack_key(key: torch.Tensor, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Packed keys → (depth float32 with ``inf`` where nothing landed, id int64 with −1 there)."""
    hit = key != _NO_HIT
    ident = torch.where(hit, key & 0xFFFFFFFF, torch.full_like(key, -1))
    depth = (key >> 32).to(torch.int32).view(torch.float32).clone()
    depth[~hit] = float("inf")
    return depth.numpy().reshape(shape), ident.numpy().reshape(shape)


def _footprint_groups(width: np.ndarray, height: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Group items by the powers of two ≥ their pixel footprint's width and height, so
    that a group's candidate grid wastes at most 4× the area it tests.

    width, height: (M,) ≥ 1 → [(grid width, grid height, member indices)].
    """
    pw = 1 << np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64)
    ph = 1 << np.ceil(np.log2(np.maximum(height, 1))).astype(np.int64)
    key = pw * (1 << 20) + ph
    return [(int(k >> 20), int(k & ((1 << 20) - 1)), np.nonzero(key == k)[0]) for k in np.unique(key)]


def _scan_groups(lo: np.ndarray, size: np.ndarray):
    """Yield, per footprint group and chunk, the members and their candidate pixels.

    lo, size: (M, 2) int first pixel (x, y) and footprint (width, height) → yields
    (members (K,) int64, xs (K, gw) int64, ys (K, gh) int64, in-footprint mask (K, gh, gw)).
    """
    for gw, gh, members in _footprint_groups(size[:, 0], size[:, 1]):
        gx, gy = torch.arange(gw), torch.arange(gh)
        per = max(1, _CHUNK // (gw * gh))
        for start in range(0, len(members), per):
            m = torch.from_numpy(members[start : start + per])
            lo_m = torch.from_numpy(lo[m.numpy()])
            size_m = torch.from_numpy(size[m.numpy()])
            xs = lo_m[:, 0, None] + gx[None, :]
            ys = lo_m[:, 1, None] + gy[None, :]
            valid = (gy[None, :, None] < size_m[:, 1, None, None]) & (gx[None, None, :] < size_m[:, 0, None, None])
            yield m, xs, ys, valid


def rasterize_mesh_torch(vertices: np.ndarray, faces: np.ndarray, cams: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of pixel centres (perspective-correct depth).

    vertices: (P, 3) float32 · faces: (F, 3) int → depth: (V, S, S) float32 (``inf`` on
    background) · face_id: (V, S, S) int64 (−1 on background). Same outputs as
    ``raycast_mesh_embree`` up to ties on shared edges.
    """
    s, nv = cams.image_size, len(cams)
    uv_all, z_all = project(vertices, cams)
    keys = torch.full((nv * s * s,), _NO_HIT, dtype=torch.int64)
    for v in range(nv):
        tuv = uv_all[v][faces].astype(np.float64)  # (F, 3, 2)
        tz = z_all[v][faces].astype(np.float64)  # (F, 3)
        # Faces crossing the camera plane cannot be projected; shapes sit well in front.
        ok = (tz > 1e-6).all(1) & np.isfinite(tuv).all((1, 2))
        lo = np.clip(np.ceil(np.nan_to_num(tuv.min(1)) - 0.5), 0, s - 1)  # first pixel centre ≥ min
        hi = np.clip(np.floor(np.nan_to_num(tuv.max(1)) - 0.5), -1, s - 1)  # last pixel centre ≤ max
        size = (hi - lo + 1).astype(np.int64)
        # Barycentric weight of vertex k as an affine function of the pixel centre:
        # w_k = (A_k x + B_k y + C_k) / area, from the edge opposite k (p → q).
        p = tuv[:, [1, 2, 0]]
        q = tuv[:, [2, 0, 1]]
        area = (tuv[:, 1, 0] - tuv[:, 0, 0]) * (tuv[:, 2, 1] - tuv[:, 0, 1]) - (tuv[:, 1, 1] - tuv[:, 0, 1]) * (
            tuv[:, 2, 0] - tuv[:, 0, 0]
        )
        ok &= (size > 0).all(1) & (np.abs(area) > 1e-12)
        fids = np.nonzero(ok)[0]
        if len(fids) == 0:
            continue
        p, q, ar = p[fids], q[fids], area[fids, None]
        coef_a = torch.from_numpy(-(q[..., 1] - p[..., 1]) / ar)  # (M, 3)
        coef_b = torch.from_numpy((q[..., 0] - p[..., 0]) / ar)
        coef_c = torch.from_numpy(((q[..., 1] - p[..., 1]) * p[..., 0] - (q[..., 0] - p[..., 0]) * p[..., 1]) / ar)
        inv_z = torch.from_numpy(1.0 / tz[fids])
        t_fid = torch.from_numpy(fids)
        for m, xs, ys, valid in _scan_groups(lo[fids].astype(np.int64), size[fids]):
            cx, cy = xs.double() + 0.5, ys.double() + 0.5
            w = [
                (coef_a[m, k, None] * cx)[:, None, :] + (coef_b[m, k, None] * cy + coef_c[m, k, None])[:, :, None]
                for k in range(2)
            ]  # (K, gh, gw) each
            inside = valid & (w[0] >= 0) & (w[1] >= 0) & (w[0] + w[1] <= 1)
            mi, yi, xi = inside.nonzero(as_tuple=True)
            if len(mi) == 0:
                continue
            b0, b1 = w[0][mi, yi, xi], w[1][mi, yi, xi]
            iz = inv_z[m][mi]
            inv_depth = b0 * iz[:, 0] + b1 * iz[:, 1] + (1.0 - b0 - b1) * iz[:, 2]
            flat = v * s * s + ys[mi, yi] * s + xs[mi, xi]
            keys.scatter_reduce_(0, flat, _float_key(1.0 / inv_depth, t_fid[m][mi]), reduce="amin")
    return _unpack_key(keys, (nv, s, s))


def splat_points(points: np.ndarray, cams: Cameras, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered disk splats of a point cloud.

    points: (N, 3) · radius: world units → depth: (V, S, S) float32 (``inf`` on
    background) · point_id: (V, S, S) int64, the nearest point whose disk covers the
    pixel centre (−1 on background).
    """
    if radius <= 0:
        raise ValueError(f"point_radius={radius} must be > 0")
    s, nv = cams.image_size, len(cams)
    uv_all, z_all = project(points, cams)
    keys = torch.full((nv * s * s,), _NO_HIT, dtype=torch.int64)
    for v in range(nv):
        z = z_all[v].astype(np.float64)
        uv = uv_all[v].astype(np.float64)
        ok = (z > 1e-6) & np.isfinite(uv).all(1)
        r = np.where(ok, np.maximum(cams.focal[v] * radius / np.where(ok, z, 1.0), MIN_SPLAT_PX), 0.0)
        uv = np.nan_to_num(uv)
        lo = np.clip(np.ceil(uv - r[:, None] - 0.5), 0, s - 1)
        hi = np.clip(np.floor(uv + r[:, None] - 0.5), -1, s - 1)
        size = (hi - lo + 1).astype(np.int64)
        ok &= (size > 0).all(1)
        pids = np.nonzero(ok)[0]
        if len(pids) == 0:
            continue
        t_uv, t_r2 = torch.from_numpy(uv[pids]), torch.from_numpy(r[pids] ** 2)
        t_z, t_pid = torch.from_numpy(z[pids]), torch.from_numpy(pids)
        for m, xs, ys, valid in _scan_groups(lo[pids].astype(np.int64), size[pids]):
            dx2 = (xs.double() + 0.5 - t_uv[m, 0, None]) ** 2  # (K, gw)
            dy2 = (ys.double() + 0.5 - t_uv[m, 1, None]) ** 2  # (K, gh)
            inside = valid & (dx2[:, None, :] + dy2[:, :, None] <= t_r2[m, None, None])
            mi, yi, xi = inside.nonzero(as_tuple=True)
            flat = v * s * s + ys[mi, yi] * s + xs[mi, xi]
            keys.scatter_reduce_(0, flat, _float_key(t_z[m][mi], t_pid[m][mi]), reduce="amin")
    return _unpack_key(keys, (nv, s, s))


def _point_pixels(uv: np.ndarray, depth: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, N) bool inside the image and in front of the camera, and the (V, N) row and
    column of each point's pixel (0 where outside)."""
    with np.errstate(invalid="ignore"):
        col = np.floor(uv[..., 0])
        row = np.floor(uv[..., 1])
        inside = (col >= 0) & (col < s) & (row >= 0) & (row < s) & (depth > 0)
    return inside, np.where(inside, row, 0).astype(np.int64), np.where(inside, col, 0).astype(np.int64)


def _check_vis_inputs(uv: np.ndarray, depth: np.ndarray, depth_map: np.ndarray) -> None:
    if uv.ndim != 3 or uv.shape[2] != 2 or depth.shape != uv.shape[:2]:
        raise ValueError(f"uv {uv.shape} must be (V, N, 2) and depth {depth.shape} (V, N)")
    nv = uv.shape[0]
    if depth_map.ndim != 3 or depth_map.shape[0] != nv or depth_map.shape[1] != depth_map.shape[2]:
        raise ValueError(f"depth_map {depth_map.shape} must be (V, S, S) with V = {nv}")


def point_visibility(uv: np.ndarray, depth: np.ndarray, depth_map: np.ndarray, tolerance: float) -> np.ndarray:
    """Depth test of projected points against the rendered depth at their pixel centre.

    uv: (V, N, 2) pixel coordinates · depth: (V, N) · depth_map: (V, S, S) (``inf`` on
    background) · tolerance: world units → (V, N) bool: inside the image, in front of
    the camera and at most ``tolerance`` behind the surface seen at the point's pixel.
    Exact for splats (a splat is flat across its pixels); for meshes see
    ``mesh_point_visibility``.
    """
    _check_vis_inputs(uv, depth, depth_map)
    inside, row, col = _point_pixels(uv, depth, depth_map.shape[1])
    surface = depth_map[np.arange(len(uv))[:, None], row, col]
    return inside & (depth <= surface + tolerance)


def mesh_point_visibility(
    points: np.ndarray,
    cams: Cameras,
    depth_map: np.ndarray,
    face_id: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Depth test of points against a rendered mesh, along each point's own ray.

    The depth map holds the surface at pixel centres; on a surface seen at a grazing
    angle that differs from the surface under the point by the slope times up to 0.7
    pixel, far more than ``tolerance`` (a 10° elevation camera and a horizontal face:
    0.05–0.1 at 800²). So the surface depth is taken on the plane of the face seen at the
    point's pixel, intersected with the ray through the point itself; that is exact
    whenever the pixel sees the point's own face (or a coplanar neighbour). Where the
    plane is parallel to the ray the pixel-centre depth is used.

    points: (N, 3) · depth_map, face_id: (V, S, S) from the rasteriser → (V, N) bool.
    """
    uv, depth = project(points, cams)
    _check_vis_inputs(uv, depth, depth_map)
    nv = len(cams)
    inside, row, col = _point_pixels(uv, depth, depth_map.shape[1])
    views = np.arange(nv)[:, None]
    surface = depth_map[views, row, col].astype(np.float64)
    fid = face_id[views, row, col]
    seen = inside & (fid >= 0)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)[fid[seen]]]  # (K, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vi = np.broadcast_to(views, fid.shape)[seen]
    eye = cams.eye[vi].astype(np.float64)
    ray = np.asarray(points, np.float64)[np.nonzero(seen)[1]] - eye  # the point sits at t = 1
    den = np.einsum("kj,kj->k", normal, ray)
    num = np.einsum("kj,kj->k", normal, tri[:, 0] - eye)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    ok = np.isfinite(t) & (t > 0) & (np.abs(den) > 1e-9 * np.linalg.norm(normal, axis=1) * np.linalg.norm(ray, axis=1))
    plane = surface[seen]
    plane[ok] = t[ok] * depth[seen][ok]  # depth grows linearly with t along one ray
    surface[seen] = plane
    return inside & (depth <= surface + tolerance)


def hidden_point_removal(points: np.ndarray, cams: Cameras, gamma: float = HPR_GAMMA) -> np.ndarray:
    """Visibility of a bare point cloud by hidden-point removal (Katz, Tal, Basri 2007).

    Per view, points are flipped spherically about the camera (``p + 2 (R − |p|) p/|p|``,
    ``R = max|p| · 10^gamma``); the points on the convex hull of the flipped set and the
    camera are the visible ones. Needs no normals, no splat radius and no tolerance.

    points: (N, 3) → (V, N) bool, also requiring the point to land inside the image.
    """
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, np.float64)
    uv, depth = project(points, cams)
    inside, _, _ = _point_pixels(uv, depth, cams.image_size)
    # Repeated points (clouds padded to a fixed size) share one hull vertex: test unique ones.
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    out = np.zeros((len(cams), len(unique)), bool)
    if len(unique) < 4:  # no hull in 3D: every point is unoccluded
        return inside
    for v in range(len(cams)):
        rel = unique - cams.eye[v].astype(np.float64)
        norm = np.maximum(np.linalg.norm(rel, axis=1, keepdims=True), 1e-12)
        radius = norm.max() * 10.0**gamma
        flipped = rel + 2.0 * (radius - norm) * rel / norm
        try:
            hull = ConvexHull(np.vstack([flipped, np.zeros((1, 3))]))
        except QhullError:  # degenerate (e.g. all points coplanar with the camera)
            out[v] = True
            continue
        ids = hull.vertices[hull.vertices < len(unique)]
        out[v, ids] = True
    return out[:, inverse.reshape(-1)] & inside


def _shade(cos: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """(V, S, S) |cos| and coverage → (V, S, S, 3) uint8 grey on white."""
    grey = np.where(covered, 255.0 * (AMBIENT + DIFFUSE * np.clip(cos, 0.0, 1.0)), 255.0)
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)


def _covered_cos(cams: Cameras, item_id: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """|cos| between each pixel's ray and the normal of the item (face or point) seen
    there, 0 on background.

    item_id: (V, S, S) int64 (−1 background) · normals: (K, 3) unit world normals → (V, S, S) float32.
    """
    s = cams.image_size
    # Rotate the K normals into each camera, rather than every pixel's ray out of it; the
    # appended zero normal makes background (id −1) come out as 0.
    n_cam = np.einsum("vij,kj->vki", cams.world_to_cam[:, :3, :3], normals.astype(np.float32))
    n_cam = np.concatenate([n_cam, np.zeros((len(cams), 1, 3), np.float32)], axis=1)
    c = np.arange(s, dtype=np.float32) + 0.5 - s / 2.0
    cos = np.empty(item_id.shape, np.float32)
    for v in range(len(cams)):
        x = c[None, :] / cams.focal[v]  # (1, S) camera-space ray (x, y, −1)
        y = -c[:, None] / cams.focal[v]  # (S, 1)
        n = n_cam[v][item_id[v]]  # (S, S, 3)
        cos[v] = np.abs(n[..., 0] * x + n[..., 1] * y - n[..., 2]) / np.sqrt(x * x + y * y + 1.0)
    return cos


def _mesh_face_labels(shape: Shape, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
    """The mesh's face labels, or (when it has none) those of the nearest labelled point."""
    mesh = shape.mesh
    assert mesh is not None
    if mesh.face_labels is not None:
        labels = np.asarray(mesh.face_labels, np.int64)
        if labels.shape != (len(faces),):
            raise ValueError(f"shape {shape.shape_id}: face_labels {labels.shape} != ({len(faces)},)")
        return labels
    if shape.labels is None:
        return None
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(shape.points).query(vertices[faces].mean(1))
    return shape.labels[nearest]


def render_shape(shape: Shape, cfg: RenderConfig, cams: Cameras | None = None) -> RenderedViews:
    """Render ``shape`` from the views of ``cfg`` (or ``cams``) and test its points' visibility.

    Uses ``shape.mesh`` when present (backend ``cfg.backend``), else splats ``shape.points``.
    → ``RenderedViews`` with V views of ``cfg.image_size``² pixels and N = ``shape.num_points``.
    """
    cams = make_cameras(cfg) if cams is None else cams
    if shape.mesh is not None:
        vertices, faces = _check_mesh(shape.mesh)
        raster = raycast_mesh_embree if resolve_backend(cfg.backend) == "embree" else rasterize_mesh_torch
        depth, item_id = raster(vertices, faces, cams)
        tri = vertices[faces].astype(np.float64)
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        item_labels = _mesh_face_labels(shape, vertices, faces)
    else:
        depth, item_id = splat_points(shape.points, cams, cfg.point_radius)
        normals = shape.normals
        item_labels = shape.labels
    covered = item_id >= 0
    if normals is not None:
        normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        # Two-sided headlight (|cos|): mesh orientation is not consistent across datasets.
        cos = _covered_cos(cams, item_id, normals)
    else:
        # A point cloud without normals: shade by depth (near = bright) so it reads as 3D.
        seen = depth[covered]
        lo, hi = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 1.0)
        cos = 1.0 - (np.where(covered, depth, hi) - lo) / max(hi - lo, 1e-6)
    if item_labels is None:
        pixel_labels = np.full(depth.shape, -1, np.int16)
    else:
        # Index −1 (background) picks the appended −1.
        pixel_labels = np.append(np.asarray(item_labels, np.int16), np.int16(-1))[item_id]
    uv, pdepth = project(shape.points, cams)
    if shape.mesh is not None:
        visible = mesh_point_visibility(shape.points, cams, depth, item_id, vertices, faces, cfg.depth_tolerance)
    elif cfg.point_visibility == "hpr":
        visible = hidden_point_removal(shape.points, cams)
    elif cfg.point_visibility == "depth":
        visible = point_visibility(uv, pdepth, depth, cfg.depth_tolerance)
    else:
        raise ValueError(f"render.point_visibility={cfg.point_visibility!r} is not one of hpr, depth")
    return RenderedViews(
        images=_shade(cos, covered),
        depth=depth.astype(np.float32),
        pixel_labels=pixel_labels,
        point_uv=uv,
        point_visible=visible,
        cameras=cams,
    )
