"""A student that first turns each cloud into its category's common pose (``student.align=cube``).

The reference clouds of each category are part of the model (buffers, so they travel in
every checkpoint and reach every DDP worker and re-scoring actor with the weights):
whatever calls the student, training, re-scoring or segmenting new shapes, gets the same
alignment. ``fit_references`` picks them from the distillation shapes, geometry only (no
labels, no units), before training starts.

The rotation is a property of the shape (and of the references), not of the batch:
``shape_rotations`` chooses it once per raw (un-augmented) cloud and remembers it, keyed
by the cloud's bytes and category, so every later epoch, re-scoring pass or worker that
sees the same cloud again (streaming sources re-read it from storage) just looks it up;
the caller passes it as ``rotation=`` (``distill.passes``). A forward without ``rotation``
(new shapes) chooses for the whole batch at once (``rotation_costs_batched``). The
memory is dropped whenever the references change (``fit_references``, ``load_state_dict``,
any in-place write to them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.pose import (
    ROTATIONS,
    chamfer,
    choose,
    choose_batched,
    co_align,
    rotation_costs,
    rotation_costs_batched,
    subsample,
)
from distill.student import ops

# Remembered choices at most (a dict of small tuples; cleared when full).
_MAX_REMEMBERED = 1 << 17


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
        self._chosen: dict[tuple[int, int, bytes], int] = {}  # (category, N, digest of the raw cloud) → rotation
        self._chosen_for = b""  # digest of the references the choices were made against
        self._refs_version: tuple[int, ...] = ()
        self._refs_digest = b""

    @property
    def encoder(self) -> nn.Module:
        """The wrapped student's encoder (every student has one: docs/design.md §5, the registry)."""
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
        self._chosen.clear()
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

    def _references_key(self) -> bytes:
        """A digest of the references' content. Recomputed only when they may have changed:
        in-place writes bump a tensor's version (``load_state_dict`` copies into the
        buffers, and so does DDP's buffer broadcast at every step, with equal content),
        ``.to()`` replaces the storage."""
        version = (self.refs._version, self.ref_count._version, self.refs.data_ptr(), self.ref_count.data_ptr())
        if version != self._refs_version:
            digest = hashlib.blake2b(self.refs.detach().cpu().numpy().tobytes(), digest_size=16)
            digest.update(self.ref_count.detach().cpu().numpy().tobytes())
            self._refs_version, self._refs_digest = version, digest.digest()
        return self._refs_digest

    @torch.no_grad()
    def rotations(self, xyz: Tensor, category: Tensor | None) -> Tensor:
        """(B, N, 3) clouds · category (B,) or None → (B,) int64 indices into ``ROTATIONS``,
        on ``xyz``'s device: all clouds against their category's references at once
        (``rotation_costs_batched``), no host sync. Unfitted categories get 0 (identity)."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"xyz must be (B, N, 3), got shape {tuple(xyz.shape)}")
        dev = xyz.device
        cats = torch.zeros(xyz.shape[0], dtype=torch.long, device=dev) if category is None else category.to(dev).long()
        clouds = subsample(xyz.detach().float(), self.ref_points)
        refs, counts = self.refs.to(clouds)[cats], self.ref_count.to(dev)[cats]  # (B, K, P, 3), (B,)
        return choose_batched(rotation_costs_batched(clouds, refs, counts), self.tol)

    @torch.no_grad()
    def rotations_reference(self, xyz: Tensor, category: Tensor | None) -> Tensor:
        """The earlier per-cloud loop (reference twin of ``rotations``): (B, N, 3) → (B,)
        int64 on the CPU."""
        cats = torch.zeros(xyz.shape[0], dtype=torch.long) if category is None else category.long().cpu()
        clouds = subsample(xyz.detach().float(), self.ref_points)
        out = torch.zeros(xyz.shape[0], dtype=torch.long)
        counts = self.ref_count.tolist()  # one device sync, not one per cloud
        for b, c in enumerate(cats.tolist()):
            n = counts[c]
            if n:
                out[b] = choose(rotation_costs(clouds[b], self.refs[c, :n].to(clouds)), self.tol)
        return out

    @torch.no_grad()
    def shape_rotations(self, xyz: Tensor, category: Tensor | None) -> Tensor | None:
        """The rotation of each raw (un-augmented) cloud, chosen once per cloud and
        remembered: (B, N, 3) · category (B,) or None → (B,) int64 on the CPU, or None
        when there is nothing to choose (not fitted) or the reference operators are in
        use (``ops.use_reference_operators``: re-choose at every forward, as before).

        Keyed by the cloud's category, size and bytes (a BLAKE2 digest), so a cloud is
        never given another cloud's choice; one host copy per batch when on CUDA.
        """
        if not ops.fast_operators() or not bool(self.ref_count.any()):
            return None
        key = self._references_key()
        if key != self._chosen_for:
            self._chosen.clear()
            self._chosen_for = key
        if len(self._chosen) > _MAX_REMEMBERED:
            self._chosen.clear()
        host = xyz.detach().float().cpu().contiguous()
        cats = [0] * host.shape[0] if category is None else category.long().cpu().tolist()
        n = host.shape[1]
        keys = [(c, n, hashlib.blake2b(p.numpy().tobytes(), digest_size=16).digest()) for c, p in zip(cats, host)]
        missing = [b for b, k in enumerate(keys) if k not in self._chosen]
        if missing:
            sub = torch.tensor(missing)
            found = self.rotations(host[sub].to(self.refs.device), None if category is None else category.cpu()[sub])
            for b, r in zip(missing, found.tolist()):
                self._chosen[keys[b]] = r
        return torch.tensor([self._chosen[k] for k in keys], dtype=torch.long)

    def forward(
        self,
        xyz: Tensor,
        normals: Tensor | None = None,
        category: Tensor | None = None,
        rotation: Tensor | None = None,
    ) -> Tensor:
        """xyz (B, N, 3) · normals (B, N, 3) or None · category (B,) or None · rotation
        (B,) int64 indices into ``ROTATIONS`` (from ``shape_rotations`` on the raw clouds),
        or None: chosen here on ``xyz`` → the inner student's logits."""
        if rotation is None:
            if not bool(self.ref_count.any()):  # not fitted yet: nothing to align to
                return self.inner(xyz, normals=normals, category=category)
            rotation = (
                self.rotations(xyz, category) if ops.fast_operators() else self.rotations_reference(xyz, category)
            )
        elif rotation.shape != (xyz.shape[0],):
            raise ValueError(f"rotation must be (B={xyz.shape[0]},) indices, got shape {tuple(rotation.shape)}")
        with torch.autocast(xyz.device.type, enabled=False):  # the geometry stays float32
            rot = ROTATIONS.to(xyz)[rotation.to(xyz.device)]  # (B, 3, 3)
            xyz = xyz @ rot.transpose(1, 2)
            if normals is not None:
                normals = normals @ rot.transpose(1, 2)
        return self.inner(xyz, normals=normals, category=category)
