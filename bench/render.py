"""Rendering benchmarks: CPU time per shape of the extraction chain, and voting quality
against image size.

    python -m bench.render speed   [--sizes 800 320] [--repeats 3]
    python -m bench.render quality [--sizes 320 800] [--per-category 0] [--path mesh|points]
    python -m bench.render visibility [--size 320] [--per-category 2]

``speed``: one Labeled-PSB mesh of about 20k faces (Bust 301, 18,500 faces) and its
2,048 sampled points, 10 PartSLIP views, torch on one thread (a Ray CPU task gets one):
median CPU seconds over ``--repeats`` of each stage: render (raster/ray cast, shading,
labels, visibility), visibility alone, the simulated teacher (glip_like, box and mask),
back-projection and voting. CPU time is the steadier figure on a shared machine; wall
time is recorded too.

``quality``: all 190 Labeled-PSB shapes (or ``--per-category`` of each), per image size:
the fraction of visible points voting labels right and the per-shape mIoU of ``vote``
(uncovered points count as wrong) and ``vote_nearest``, with the clean and glip_like
simulated teachers, boxes and masks.

``visibility``: point-cloud visibility (the shape's 2,048 points without the mesh) against
the mesh's visibility of the same points taken as truth: precision, recall and agreement
of hidden-point removal and of the splat depth test (``point_radius`` 0.02 and 0.03).

Every run prints a table and merges its numbers into ``bench/results/render.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from bench.common import load_psb, save, timed
from distill.backproject import backproject
from distill.config import RenderConfig, TeacherConfig
from distill.metrics import MIoUTable
from distill.records import Shape
from distill.render import (
    embree_available,
    hidden_point_removal,
    mesh_point_visibility,
    mesh_rasterizer,
    render_shape,
)
from distill.teachers.simulated import SimulatedTeacher
from distill.voting import vote, vote_nearest

SPEED_SHAPE = "psb/Bust/301"


# ----------------------------------------------------------------------------- speed


def speed_one(shape: Shape, size: int, backend: str, repeats: int) -> dict[str, float]:
    cfg = RenderConfig(image_size=size, backend=backend)
    render_shape(shape, dataclasses.replace(cfg, image_size=32))  # warm-up (imports, allocators)
    views, r_cpu, r_wall = timed(lambda: render_shape(shape, cfg), repeats)
    row = {"render_cpu_s": r_cpu, "render_wall_s": r_wall}
    if shape.mesh is not None:
        # Rasterise once more to time the visibility test on its own.
        v, f = shape.mesh.vertices, shape.mesh.faces.astype(np.int64)
        depth, face = mesh_rasterizer(backend)(v, f, views.cameras)
        _, row["visibility_cpu_s"], _ = timed(
            lambda: mesh_point_visibility(shape.points, views.cameras, depth, face, v, f, cfg.depth_tolerance), repeats
        )
    else:
        _, row["visibility_cpu_s"], _ = timed(lambda: hidden_point_removal(shape.points, views.cameras), repeats)
    for output in ("box", "mask"):
        teacher = SimulatedTeacher(TeacherConfig(preset="glip_like", output=output), seed=0)
        preds, row[f"teacher_{output}_cpu_s"], _ = timed(lambda t=teacher: t.predict(views, shape), repeats)
        units, row[f"backproject_{output}_cpu_s"], _ = timed(
            lambda p=preds: backproject(views, p, shape.shape_id, "simulated"), repeats
        )
        row[f"units_{output}"] = len(units)
    _, row["vote_cpu_s"], _ = timed(lambda: vote(units, shape.num_points, shape.num_parts), repeats)
    row["chain_box_cpu_s"] = r_cpu + row["teacher_box_cpu_s"] + row["backproject_box_cpu_s"] + row["vote_cpu_s"]
    row["visible_fraction"] = float(views.point_visible.mean())
    return row


def run_speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    (mesh_shape,) = [s for s in load_psb(categories=["Bust"]) if s.shape_id == SPEED_SHAPE]
    cloud = dataclasses.replace(mesh_shape, mesh=None)
    paths = [("mesh/torch", mesh_shape, "torch"), ("points", cloud, "torch")]
    if embree_available():
        paths.insert(0, ("mesh/embree", mesh_shape, "embree"))
    print(f"{SPEED_SHAPE}: {len(mesh_shape.mesh.faces)} faces, {mesh_shape.num_points} points, 10 views, 1 thread")
    print(
        f"{'size':>5} {'path':12} {'render':>7} {'(vis)':>7} {'teach box':>9} {'teach mask':>10} "
        f"{'bp box':>7} {'bp mask':>7} {'vote':>6} {'chain box':>9}   CPU s / shape"
    )
    for size in args.sizes:
        for name, shape, backend in paths:
            r = speed_one(shape, size, backend, args.repeats)
            save("render", "speed", r, key=f"{size} {name}")
            print(
                f"{size:5d} {name:12} {r['render_cpu_s']:7.3f} {r['visibility_cpu_s']:7.3f} "
                f"{r['teacher_box_cpu_s']:9.3f} {r['teacher_mask_cpu_s']:10.3f} {r['backproject_box_cpu_s']:7.3f} "
                f"{r['backproject_mask_cpu_s']:7.3f} {r['vote_cpu_s']:6.3f} {r['chain_box_cpu_s']:9.3f}",
                flush=True,
            )


# ----------------------------------------------------------------------------- quality


def run_quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    shapes = load_psb(args.per_category)
    if args.path == "points":
        shapes = [dataclasses.replace(s, mesh=None) for s in shapes]
    combos = [(p, o) for p in ("clean", "glip_like") for o in ("box", "mask")]
    print(f"{len(shapes)} Labeled-PSB shapes, path {args.path}, 10 PartSLIP views")
    print(f"{'size':>5} {'teacher':16} {'visible right':>13} {'vote mIoU':>9} {'(cat)':>6} {'nearest mIoU':>12}")
    for size in args.sizes:
        cfg = RenderConfig(image_size=size)
        tables = {c: (MIoUTable(), MIoUTable(), [0, 0]) for c in combos}
        cpu = 0.0
        for shape in shapes:
            c = time.process_time()
            views = render_shape(shape, cfg)
            cpu += time.process_time() - c
            visible = views.point_visible.any(0) & (shape.labels >= 0)
            for preset, output in combos:
                teacher = SimulatedTeacher(TeacherConfig(preset=preset, output=output), seed=0)
                units = backproject(views, teacher.predict(views, shape), shape.shape_id, teacher.name)
                labels = vote(units, shape.num_points, shape.num_parts)
                t_vote, t_near, counts = tables[(preset, output)]
                t_vote.add(shape.shape_id, shape.category, labels, shape.labels, shape.num_parts)
                near = vote_nearest(units, shape.points, shape.num_parts)
                t_near.add(shape.shape_id, shape.category, near, shape.labels, shape.num_parts)
                counts[0] += int((labels[visible] == shape.labels[visible]).sum())
                counts[1] += int(visible.sum())
        for (preset, output), (t_vote, t_near, counts) in tables.items():
            row = {
                "visible_right": counts[0] / counts[1],
                "vote_shape_miou": t_vote.shape_mean(),
                "vote_category_miou": t_vote.category_mean(),
                "nearest_shape_miou": t_near.shape_mean(),
                "num_shapes": len(t_vote.per_shape),
                "render_cpu_s_per_shape": cpu / len(shapes),
            }
            save("render", "quality", row, key=f"{args.path} {size} {preset} {output}")
            print(
                f"{size:5d} {preset + ' ' + output:16} {row['visible_right']:13.4f} {row['vote_shape_miou']:9.2f} "
                f"{row['vote_category_miou']:6.2f} {row['nearest_shape_miou']:12.2f}",
                flush=True,
            )
        print(f"      render CPU s / shape at {size}²: {cpu / len(shapes):.3f}", flush=True)


# ----------------------------------------------------------------------------- visibility


def run_visibility(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    shapes = load_psb(args.per_category)
    methods = {
        "hpr": RenderConfig(image_size=args.size, point_visibility="hpr"),
        "depth r0.02": RenderConfig(image_size=args.size, point_visibility="depth"),
        "depth r0.03": RenderConfig(image_size=args.size, point_visibility="depth", point_radius=0.03),
    }
    stats: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    for shape in shapes:
        truth = render_shape(shape, RenderConfig(image_size=args.size)).point_visible
        cloud = dataclasses.replace(shape, mesh=None)
        for name, cfg in methods.items():
            vis = render_shape(cloud, cfg).point_visible
            both = (vis & truth).sum()
            stats[name].append((both / max(vis.sum(), 1), both / max(truth.sum(), 1), (vis == truth).mean()))
    print(f"{len(shapes)} Labeled-PSB shapes at {args.size}²: point-cloud visibility vs the mesh's")
    print(f"{'method':12} {'precision':>9} {'recall':>7} {'agreement':>9}")
    for name, rows in stats.items():
        p, r, a = np.mean(rows, axis=0)
        row = {"precision": p, "recall": r, "agreement": a, "shapes": len(rows)}
        save("render", "visibility", row, key=f"{args.size} {name}")
        print(f"{name:12} {p:9.3f} {r:7.3f} {a:9.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--sizes", type=int, nargs="+", default=[800, 320])
    sp.add_argument("--repeats", type=int, default=3)
    qp = sub.add_parser("quality")
    qp.add_argument("--sizes", type=int, nargs="+", default=[320, 800])
    qp.add_argument("--per-category", type=int, default=0)
    qp.add_argument("--path", choices=["mesh", "points"], default="mesh")
    vp = sub.add_parser("visibility")
    vp.add_argument("--size", type=int, default=320)
    vp.add_argument("--per-category", type=int, default=2)
    args = parser.parse_args(argv)
    {"speed": run_speed, "quality": run_quality, "visibility": run_visibility}[args.cmd](args)


if __name__ == "__main__":
    main()
