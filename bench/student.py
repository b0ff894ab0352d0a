"""Student benchmarks: training speed and memory per backbone, and distillation quality.

    python -m bench.student speed      [--backbones ...] [--batch 8] [--threads 2]
    python -m bench.student synthetic  [--backbones ...] [--epochs 25]  # noisy units from ground truth
    python -m bench.student psb        [--backbones ...] [--mode tta|pre] [--per-category]
    python -m bench.student truth      [--mode pre]   # the ceiling: ground-truth labels as units

``speed``: forward + backward + Adam step on (batch, 2048, 3) clouds, each backbone at its
width/k in a fresh subprocess (so ``ru_maxrss`` is its own peak); reports shapes/s from
the median and best step, CPU seconds per shape, and peak RSS. Timings on a shared
machine are noisy: the CPU time per shape is the steadier figure.

``synthetic``: Labeled PSB shapes (19 categories × 10) with knowledge units made from
ground truth and then corrupted: per shape 30% of the points (random balls) are covered
by no unit; per view and part a random spatial chunk of the part becomes a unit whose
label is flipped to another part with probability 0.3 (score U[0.5, 0.8] when wrong,
U[0.5, 0.95] when right). Does the student beat voting on the same units?

``psb``: the benchmark setting: Labeled PSB with the simulated ``glip_like`` teacher
(render 320², docs/design.md §4), units cached under ``bench/results/cache/``. ``--mode tta``
distils on all 190 shapes and scores them; ``--mode pre`` distils on each category's
first 5 and scores the other 5. Voting on the scored shapes' own units is the baseline.

``truth``: the same student, trained on the distillation shapes' ground-truth labels (one
unit per part, score 1, bd off) instead of a teacher's: the most any distillation from
these shapes can give this student. In ``--mode pre`` it measures how far the student
generalises from 5 shapes a category to the other 5 (52.1 on PSB, vs 40.0 from the
``glip_like`` units and 46.2 for voting + nearest on the scored shapes).

Every run prints a table and merges its numbers into ``bench/results/student.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from bench.common import RESULTS, load_psb, peak_rss_mib, run_module, save, truth_units
from distill.config import RenderConfig, StudentConfig, TeacherConfig, TrainConfig
from distill.labels import LabelSpace, group_for_students
from distill.metrics import MIoUTable
from distill.passes import evaluate
from distill.records import KnowledgeUnits, Shape, table_to_units, units_to_table
from distill.samples import prepare_samples
from distill.student import build_student
from distill.training import distil
from distill.voting import vote, vote_nearest

SPEED_DEFAULT = ["pointnet:32:20", "pointnet2:32:16", "pointnet2:64:20", "dgcnn_static:32:16", "dgcnn:32:16"]


def _spec(spec: str) -> tuple[str, int, int]:
    name, width, k = (spec.split(":") + ["32", "16"])[:3]
    return name, int(width), int(k)


# ----------------------------------------------------------------------------- speed


def speed_one(spec: str, batch: int, points: int, threads: int, steps: int) -> dict[str, float]:
    """One backbone in this process: timings of ``steps`` training steps after a warm-up."""
    torch.set_num_threads(threads)
    name, width, k = _spec(spec)
    torch.manual_seed(0)
    model = build_student(StudentConfig(backbone=name, width=width, k=k), 4)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x = torch.randn(batch, points, 3)
    x = x / x.norm(dim=-1, keepdim=True).amax(1, keepdim=True)
    rss0 = peak_rss_mib()
    walls, cpus = [], []
    for i in range(steps + 1):
        w, c = time.perf_counter(), time.process_time()
        model(x).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and caches
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "shapes_per_s_median": batch / float(np.median(walls)),
        "shapes_per_s_best": batch / min(walls),
        "cpu_s_per_shape": float(np.median(cpus)) / batch,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss0,
    }


def run_speed(args: argparse.Namespace) -> None:
    rows = []
    for spec in args.backbones or SPEED_DEFAULT:
        argv = ["_speed_one", spec, str(args.batch), str(args.points), str(args.threads)]
        out = run_module("bench.student", argv, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        rows.append((spec, r))
        save("student", "speed", r, key=f"{spec} b{args.batch} n{args.points} t{args.threads}")
        print(
            f"{spec:22s} params {r['params'] / 1e6:5.2f}M  shapes/s median {r['shapes_per_s_median']:5.1f} "
            f"best {r['shapes_per_s_best']:5.1f}  cpu s/shape {r['cpu_s_per_shape']:.3f}  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB",
            flush=True,
        )


# ----------------------------------------------------------------------------- data


def noisy_units(shape: Shape, seed: int, views: int = 10, flip: float = 0.3, uncovered: float = 0.3) -> KnowledgeUnits:
    """Synthetic knowledge: ground-truth chunks, 30% of points uncovered, 30% labels flipped."""
    rng = np.random.default_rng([seed, *shape.shape_id.encode()])
    pts, lab, parts = shape.points, shape.labels, shape.num_parts
    hidden = np.zeros(len(pts), bool)
    while hidden.mean() < uncovered:  # random balls until 30% of the points are hidden
        c = pts[rng.integers(len(pts))]
        hidden |= np.linalg.norm(pts - c, axis=1) < rng.uniform(0.1, 0.3)
    labels, scores, sets = [], [], []
    for _ in range(views):
        for p in range(parts):
            idx = np.flatnonzero((lab == p) & ~hidden)
            if len(idx) < 5:
                continue
            d = rng.normal(size=3)
            proj = pts[idx] @ d
            chunk = idx[proj >= np.quantile(proj, rng.uniform(0.0, 0.6))]
            y = p
            if parts > 1 and rng.random() < flip:
                y = int(rng.choice([q for q in range(parts) if q != p]))
            labels.append(y)
            scores.append(rng.uniform(0.5, 0.95) if y == p else rng.uniform(0.5, 0.8))
            sets.append(chunk)
    return KnowledgeUnits.from_lists(shape.shape_id, [0] * len(labels), labels, scores, sets, teacher="synthetic")


def teacher_units(shapes: list[Shape], image_size: int) -> dict[str, KnowledgeUnits]:
    """Simulated glip_like teacher units of every shape, cached as Parquet."""
    import pyarrow.parquet as pq

    from distill.extract import extract_shape
    from distill.teachers.simulated import SimulatedTeacher

    cache = RESULTS / "cache" / f"psb_glip_like_{image_size}.parquet"
    if cache.exists():
        units = table_to_units(pq.read_table(cache))
        if all(s.shape_id in units for s in shapes):
            return units
    teacher = SimulatedTeacher(TeacherConfig(name="simulated", preset="glip_like"), seed=0)
    render = RenderConfig(image_size=image_size)
    units, start = {}, time.perf_counter()
    for s in shapes:
        units[s.shape_id] = extract_shape(s, render, teacher)
    print(f"extracted {len(shapes)} shapes in {time.perf_counter() - start:.0f}s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(units_to_table(units.values()), cache)
    return units


def split(shapes: list[Shape], mode: str) -> tuple[list[Shape], list[Shape]]:
    """(distillation shapes, scored shapes). TTA: every shape both; Pre: each category's
    first half (in id order) distils, the rest is scored."""
    if mode == "tta":
        return shapes, shapes
    train: list[Shape] = []
    test: list[Shape] = []
    by_cat: dict[str, list[Shape]] = {}
    for s in shapes:
        by_cat.setdefault(s.category, []).append(s)
    for group in by_cat.values():
        half = len(group) // 2
        train += group[:half]
        test += group[half:]
    return train, test


# ----------------------------------------------------------------------------- quality


def vote_table(shapes: list[Shape], units: dict[str, KnowledgeUnits]) -> tuple[MIoUTable, MIoUTable]:
    """Voting baselines: uncovered points unlabelled (wrong), or from the nearest voted point."""
    plain, nearest = MIoUTable(), MIoUTable()
    for s in shapes:
        u = units.get(s.shape_id) or KnowledgeUnits.empty(s.shape_id)
        plain.add(s.shape_id, s.category, vote(u, s.num_points, s.num_parts), s.labels, s.num_parts)
        nearest.add(s.shape_id, s.category, vote_nearest(u, s.points, s.num_parts), s.labels, s.num_parts)
    return plain, nearest


def distil_and_score(
    train: list[Shape],
    test: list[Shape],
    units: dict[str, KnowledgeUnits],
    student: StudentConfig,
    cfg: TrainConfig,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[MIoUTable, float, list[list[float]]]:
    """Distil one student per group (per category, or one over all), score on ``test``."""
    table, seconds, curves = MIoUTable(), 0.0, []
    for group in group_for_students(train, cfg.per_category):
        space = LabelSpace.from_shapes(group)
        torch.manual_seed(seed)
        model = build_student(student, space.num_slots, space.num_categories)
        samples = prepare_samples(group, units, space)
        start = time.perf_counter()

        def progress(state, cats=space.categories) -> None:
            if state.epoch % 5 == 0 or state.epoch == cfg.epochs:
                h = state.history[-1]
                print(
                    f"  {'/'.join(cats)[:40]} epoch {state.epoch}: loss {h['loss']:.4f} "
                    f"{h['shapes_per_s']:.1f} shapes/s round {state.round}",
                    flush=True,
                )

        result = distil(model, samples, space, cfg, seed=seed, on_epoch_end=progress if verbose else None)
        seconds += time.perf_counter() - start
        curves.append([round(h["loss"], 4) for h in result.history])
        cats = set(space.categories)
        scored = evaluate(result.model, [s for s in test if s.category in cats], "cpu", space=space)
        table.per_shape.update(scored.per_shape)
    return table, seconds, curves


def run_quality(args: argparse.Namespace, source: str) -> None:
    torch.set_num_threads(args.threads)
    shapes = load_psb(args.per_category_shapes)
    if source == "synthetic":
        units = {s.shape_id: noisy_units(s, args.seed) for s in shapes}
    elif source == "truth":
        units = {s.shape_id: truth_units(s) for s in shapes}
        args.bd_rounds = 0  # re-scoring perfect units by a student can only make them worse
    else:
        units = teacher_units(shapes, args.image_size)
    if args.categories:
        shapes = [s for s in shapes if s.category in args.categories]
    train, test = split(shapes, args.mode)
    plain, nearest = vote_table(test, units)
    print(
        f"[{source} {args.mode}] {len(train)} distillation shapes, {len(test)} scored; "
        f"vote {plain.category_mean():.1f}  vote+nearest {nearest.category_mean():.1f} (category mIoU)",
        flush=True,
    )
    for name, t in (("vote", plain), ("vote_nearest", nearest)):
        row = {"category_miou": t.category_mean(), "shape_miou": t.shape_mean(), "per_category": t.per_category()}
        save("student", source, row, key=f"{args.mode} {name}")
    for spec in args.backbones or ["pointnet2:32:16"]:
        name, width, k = _spec(spec)
        student = StudentConfig(backbone=name, width=width, k=k, use_normals=args.normals, align=args.align)
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch,
            bd_rounds=args.bd_rounds,
            bd_trigger=args.bd_trigger,
            bd_epoch=args.bd_epoch,
            per_category=args.per_category,
        )
        table, seconds, curves = distil_and_score(train, test, units, student, cfg, args.seed, not args.per_category)
        layout = "per-category" if args.per_category else "joint"
        trigger = "" if not args.bd_rounds else ("@plateau" if args.bd_trigger == "plateau" else f"@{args.bd_epoch}")
        key = f"{args.mode} {spec} {layout} e{args.epochs} b{args.batch} bd{args.bd_rounds}{trigger} seed{args.seed}"
        if args.categories:
            key += " cats=" + ",".join(args.categories)
        if args.normals:
            key += " normals"
        if args.align != "none":
            key += f" align={args.align}"
        row = {
            "category_miou": table.category_mean(),
            "shape_miou": table.shape_mean(),
            "per_category": table.per_category(),
            "train_seconds": seconds,
            "threads": args.threads,
            "loss_curves": curves if len(curves) == 1 else None,
        }
        save("student", source, row, key=key)
        print(
            f"{key:60s} student {table.category_mean():5.1f} (shapes {table.shape_mean():5.1f})  "
            f"vote {plain.category_mean():5.1f}  vote+nearest {nearest.category_mean():5.1f}  train {seconds:6.0f}s",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_speed_one":
        spec, batch, points, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(speed_one(spec, batch, points, threads, steps=5)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "synthetic", "psb", "truth"])
    p.add_argument("--backbones", nargs="*", help="name[:width[:k]] each, e.g. pointnet2:32:16")
    p.add_argument("--batch", type=int, default=None, help="speed: 8; quality: 16")
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--bd-rounds", type=int, default=1)
    p.add_argument("--bd-trigger", choices=["plateau", "epoch"], default="plateau")
    p.add_argument("--bd-epoch", type=int, default=10)
    p.add_argument("--mode", choices=["tta", "pre"], default="tta")
    p.add_argument("--per-category", action="store_true", help="one student per category (the paper)")
    p.add_argument("--categories", nargs="*", help="PSB categories to keep (default all 19)")
    p.add_argument("--per-category-shapes", type=int, default=0, help="at most this many shapes per category")
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--normals", action="store_true", help="students see the points' normals too")
    p.add_argument("--align", choices=["none", "cube"], default="none", help="student.align")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.what == "speed":
        args.batch = args.batch or 8
        run_speed(args)
    else:
        args.batch = args.batch or 16
        run_quality(args, args.what)


if __name__ == "__main__":
    main()
