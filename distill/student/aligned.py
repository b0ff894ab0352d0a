"""A student that first turns each cloud into its category's common pose (``student.align=cube``).

The reference clouds of each category are part of the model (buffers, so they travel in
every checkpoint and reach every DDP worker and re-scoring actor with the weights):
whatever calls the student, training, re-scoring or segmenting new shapes, gets the same
alignment. ``fit_references`` picks them from the distillation shapes, geometry only (no
labels, no units), before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.pose import ROTATIONS, chamfer, choose, co_align, rotation_costs, subsample


class PoseAligned(nn.Module):
    """Wraps a student ``inner(xyz, normals=None, category=None)``.

    refs: (C, K, P, 3) the reference clouds of each category (centred, ``P`` points) ·
    ref_count: (C,) how many of a category's K slots are filled. A category without
    references (or a model not yet fitted) passes its clouds through unturned.
    """

    def __init__(
        self,
        inner: nn.Module,
        num_categories: int = 1,
        refs_per_category: int = 5,
        ref_points: int = 256,
        candidates: int = 16,
        tol: float = 0.05,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.ref_points, self.candidates, self.tol = ref_points, candidates, tol
        self.register_buffer("refs", torch.zeros(num_categories, refs_per_category, ref_points, 3))
        self.register_buffer("ref_count", torch.zeros(num_categories, dtype=torch.long))

    @property
    def encoder(self) -> nn.Module:
        """The wrapped student's encoder (every student has one: DESIGN §5, the registry)."""
        return self.inner.encoder

    @torch.no_grad()
    def fit_references(self, clouds: Sequence[Tensor], categories: Sequence[int]) -> None:
        """Choose each category's references among its clouds ((N, 3) each).

        Up to ``candidates`` clouds of the category, evenly spaced through the list, are
        co-aligned (``co_align``); their medoid and the K − 1 candidates closest to it
        in the common pose become the references. Deterministic, so every worker agrees.
        """
        if len(clouds) != len(categories):
            raise ValueError(f"{len(clouds)} clouds but {len(categories)} categories")
        self.refs.zero_()
        self.ref_count.zero_()
        by_cat: dict[int, list[Tensor]] = {}
        for cloud, c in zip(clouds, categories):
            by_cat.setdefault(int(c), []).append(cloud)
        k = self.refs.shape[1]
        for c, group in by_cat.items():
            if not 0 <= c < self.refs.shape[0]:
                raise ValueError(f"category index {c} outside [0, {self.refs.shape[0]})")
            pick = torch.linspace(0, len(group) - 1, min(self.candidates, len(group))).round().long().unique()
            cand = torch.stack([subsample(group[int(i)].float().cpu(), self.ref_points) for i in pick])
            turned = cand @ ROTATIONS[co_align(cand, self.tol)].transpose(1, 2)  # (S, P, 3)
            dist = chamfer(turned[:, None], turned[None])  # (S, S)
            medoid = int(dist.sum(1).argmin())
            chosen = turned[dist[medoid].argsort()[:k]]  # the medoid (distance 0) first
            self.refs[c, : len(chosen)] = chosen.to(self.refs)
            self.ref_count[c] = len(chosen)

    @torch.no_grad()
    def rotations(self, xyz: Tensor, category: Tensor | None) -> Tensor:
        """(B, N, 3) clouds → (B,) indices into ``ROTATIONS``."""
        cats = torch.zeros(xyz.shape[0], dtype=torch.long) if category is None else category.long().cpu()
        clouds = subsample(xyz.detach().float(), self.ref_points)
        out = torch.zeros(xyz.shape[0], dtype=torch.long)
        counts = self.ref_count.tolist()  # one device sync, not one per cloud
        for b, c in enumerate(cats.tolist()):
            n = counts[c]
            if n:
                out[b] = choose(rotation_costs(clouds[b], self.refs[c, :n].to(clouds)), self.tol)
        return out

    def forward(self, xyz: Tensor, normals: Tensor | None = None, category: Tensor | None = None) -> Tensor:
        if not bool(self.ref_count.any()):  # not fitted yet: nothing to align to
            return self.inner(xyz, normals=normals, category=category)
        rot = ROTATIONS.to(xyz)[self.rotations(xyz, category).to(xyz.device)]  # (B, 3, 3)
        xyz = xyz @ rot.transpose(1, 2)
        if normals is not None:
            normals = normals @ rot.transpose(1, 2)
        return self.inner(xyz, normals=normals, category=category)
