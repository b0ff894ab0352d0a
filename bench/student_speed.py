"""Student speed: the fast operators against the reference operators, in one run.

    python -m bench.student_speed [--batch 16] [--points 2048] [--width 32] [--k 16] [--repeats 3]
                                  [--threads 1 2] [--no-bf16]

The quality study's student (pointnet2, width 32, k 16) on (batch, points, 3) clouds, for
``student.align=none`` and ``student.align=cube``, at each thread count:

- training step: pose (fast: the per-shape rotation remembered from the raw cloud, as in
  every epoch after the first; reference: re-chosen at every forward), augmentation,
  forward, cross-entropy, backward, Adam step;
- inference forward on unseen shapes: eval mode, no gradient, the pose chosen in the
  forward (a fresh model per repeat for the fast path, so nothing is remembered).

"reference" is the earlier code path (``distill.student.ops.use_reference_operators``:
dense kNN, FPS over a trailing axis, per-cloud pose loop, out-of-place activations);
"fast" the default. Both run interleaved in this process on the same weights and clouds;
each figure is the best of ``--repeats`` timings, in shapes/s (``--clock cpu``: CPU
seconds instead of wall seconds, for a machine shared with other jobs). bf16 autocast
(``train.amp=bf16``) is measured on the fast path as an extra column. Also checked: FPS
indices identical to the reference twin, the fraction of kNN indices that differ
(near-ties), and that fast and reference logits agree.

The last line is one JSON object with the ratios (fast / reference).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import timed
from distill.augment import augment
from distill.config import StudentConfig
from distill.passes import autocast
from distill.pose import ROTATIONS
from distill.student import build_student
from distill.student.ops import (
    farthest_point_sample,
    farthest_point_sample_dense,
    knn,
    knn_dense,
    use_reference_operators,
)

PARTS = 4


def clouds(b: int, n: int, seed: int) -> torch.Tensor:
    """(b, n, 3): lopsided boxes (a lump in one corner, so the pose is defined), each in
    a random cube rotation, centred and scaled into the unit ball."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(b):
        box = torch.rand(n - n // 5, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
        lump = torch.rand(n // 5, 3, generator=g) * 0.15 + torch.tensor([0.85, 0.45, 0.2])
        pts = torch.cat([box, lump])[torch.randperm(n, generator=g)]
        pts = pts @ ROTATIONS[int(torch.randint(24, (1,), generator=g))].T
        pts = pts - pts.mean(0)
        out.append(pts / pts.norm(dim=-1).max())
    return torch.stack(out)


def make_model(args: argparse.Namespace, align: str, refs: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = StudentConfig(backbone="pointnet2", width=args.width, k=args.k, align=align)
    model = build_student(cfg, PARTS)
    fit = getattr(model, "fit_references", None)
    if callable(fit):
        fit(list(refs), [0] * len(refs))
    return model


def seconds(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes: CPU seconds with ``--clock cpu``, else wall seconds."""
    t = timed(fn)
    return t.cpu_s if CLOCK == "cpu" else t.wall_s


CLOCK = "wall"


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: str) -> None:
    """One training step as ``distill.passes.train_epoch`` takes it (loss: plain CE)."""
    rotation = None
    pick = getattr(model, "shape_rotations", None)
    if callable(pick):
        rotation = pick(x, None)  # None under the reference operators: chosen in the forward
    g = torch.Generator().manual_seed(0)
    pts, _ = augment(x, g)
    extra = {} if rotation is None else {"rotation": rotation}
    with autocast("cpu", amp):
        logits = model(pts, **extra)
    loss = F.cross_entropy(logits.float().reshape(-1, PARTS), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(args: argparse.Namespace, align: str, threads: int, x: torch.Tensor, refs: torch.Tensor) -> dict:
    torch.set_num_threads(threads)
    y = torch.randint(PARTS, x.shape[:2], generator=torch.Generator().manual_seed(1))
    model = make_model(args, align, refs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    paths = {"reference": (True, "none"), "fast": (False, "none")}
    if args.bf16:
        paths["fast_bf16"] = (False, "bf16")
    train: dict[str, list[float]] = {p: [] for p in paths}
    infer: dict[str, list[float]] = {p: [] for p in paths}
    for rep in range(args.repeats + 1):  # the first round warms up (and fills the pose memory)
        for name, (ref, amp) in paths.items():
            model.load_state_dict(state)
            opt.load_state_dict(opt_state)
            with use_reference_operators(ref):
                t = seconds(lambda amp=amp: train_step(model, opt, x, y, amp))
            if rep:
                train[name].append(t)
            fresh = make_model(args, align, refs).eval()  # unseen shapes: nothing remembered
            with use_reference_operators(ref), torch.no_grad(), autocast("cpu", amp):
                t = seconds(lambda fresh=fresh: fresh(x))
            if rep:
                infer[name].append(t)
    b = x.shape[0]
    row = {f"train_{p}": b / min(v) for p, v in train.items()}
    row.update({f"infer_{p}": b / min(v) for p, v in infer.items()})
    # Agreement of the two paths on the same weights and clouds (eval mode).
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        with use_reference_operators():
            want = model(x)
        got = model(x)
    row["logits_max_abs_diff"] = float((got - want).abs().max())
    return row


def operator_checks(x: torch.Tensor) -> dict:
    torch.set_num_threads(1)
    fps_same = bool(
        torch.equal(farthest_point_sample(x, x.shape[1] // 4), farthest_point_sample_dense(x, x.shape[1] // 4))
    )
    centres = x[:, : x.shape[1] // 4]
    idx, _ = knn(centres, x, 16)
    want, _ = knn_dense(centres, x, 16)
    ops_time = {}
    for name, fn in {
        "fps_fast": lambda: farthest_point_sample(x, x.shape[1] // 4),
        "fps_reference": lambda: farthest_point_sample_dense(x, x.shape[1] // 4),
        "knn_fast": lambda: knn(centres, x, 16),
        "knn_reference": lambda: knn_dense(centres, x, 16),
    }.items():
        fn()
        ops_time[name] = min(seconds(fn) for _ in range(3))
    return {
        "fps_identical": fps_same,
        "knn_mismatch_fraction": float((idx != want).float().mean()),
        "fps_ratio_1t": ops_time["fps_reference"] / ops_time["fps_fast"],
        "knn_ratio_1t": ops_time["knn_reference"] / ops_time["knn_fast"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="time by wall or process CPU seconds")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 autocast column")
    args = p.parse_args()
    global CLOCK
    CLOCK = args.clock
    x = clouds(args.batch, args.points, seed=0)
    refs = clouds(5, args.points, seed=1)
    summary: dict[str, float | bool] = {}
    header = f"{'align':<6} {'thr':>3} {'what':<6} {'reference':>10} {'fast':>10} {'ratio':>6}"
    header += f" {'fast bf16':>10} {'bf16/fast':>9}" if args.bf16 else ""
    print(
        f"pointnet2 width {args.width} k {args.k}, batch {args.batch} × {args.points} points; shapes/s ({args.clock})"
    )
    print(header)
    for threads in args.threads:
        for align in ("none", "cube"):
            row = measure(args, align, threads, x, refs)
            for what in ("train", "infer"):
                ratio = row[f"{what}_fast"] / row[f"{what}_reference"]
                summary[f"{what}_{align}_{threads}t"] = round(ratio, 3)
                line = (
                    f"{align:<6} {threads:>3} {what:<6} {row[f'{what}_reference']:>10.2f} {row[f'{what}_fast']:>10.2f}"
                )
                line += f" {ratio:>6.2f}"
                if args.bf16:
                    bf = row[f"{what}_fast_bf16"]
                    summary[f"bf16_{what}_{align}_{threads}t"] = round(bf / row[f"{what}_fast"], 3)
                    line += f" {bf:>10.2f} {bf / row[f'{what}_fast']:>9.2f}"
                print(line, flush=True)
            summary[f"logits_max_abs_diff_{align}_{threads}t"] = row["logits_max_abs_diff"]
    checks = operator_checks(x)
    print(
        f"FPS identical: {checks['fps_identical']}  kNN indices differing: {checks['knn_mismatch_fraction']:.2e}  "
        f"FPS ×{checks['fps_ratio_1t']:.2f}  kNN ×{checks['knn_ratio_1t']:.2f} (1 thread)"
    )
    summary.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in checks.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
