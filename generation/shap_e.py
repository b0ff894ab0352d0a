"""Text-to-3D shapes with OpenAI's Shap-E through diffusers' ``ShapEPipeline``.

``ShapEGenerator(model, device, ...)`` loads the pipeline once (a hub id such as
``openai/shap-e`` or a local ``save_pretrained`` directory) and turns prompts and seeds
into meshes in three steps, each usable alone (the Ray stage runs the first two on the
GPU actor and the third in CPU tasks):

1. ``latents(prompts, seeds)``: the prior's diffusion, batched over prompts, with
   ``output_type="latent"`` → (B, tokens, width). Each prompt's initial noise comes from
   its own CPU ``torch.Generator``, so a shape depends on its seed, never on its batch
   mates or on the device.
2. ``sdf_grid(latent)``: the latent is projected into the weights of the renderer's
   implicit MLP (``params_proj``, as the pipeline does) and its signed-distance head is
   queried on a ``grid_size``³ lattice over [-1, 1]³ → (G, G, G) float32, positive inside.
3. ``mesh_from_sdf(grid)``: marching cubes (scikit-image) at level 0 on the grid padded
   with an outside border, so every surface closes → a ``trimesh.Trimesh`` in our frame.

Why not the pipeline's ``output_type="mesh"``: its marching cubes (``MeshDecoder``) reads
its triangle tables from the ``cases``/``masks`` buffers of the checkpoint, so it only
works with the real weights (with any other weights it returns no triangles; docs/design.md §7),
and it runs on the same device as the prior. Steps 2–3 are the same computation (same
MLP, same lattice, same zero level, same closed border) with scikit-image's tables: one
code path for real weights and test weights, and the cheap CPU half of decoding can run
off the GPU. Step 2 uses ``torch.func.functional_call`` with the projected weights
instead of copying them into the renderer's MLP (the pipeline's way), so a generator
holds no per-shape state.

Frame: Shap-E's objects stand on +z; ours stand on +y with the front towards +z
(docs/design.md), so vertices are mapped (x, y, z) → (−x, z, y) — the rotation Hugging Face's
Shap-E demo applies before exporting (−90° about x, then 180° about y).

``generated_shape`` turns a mesh into an unlabelled ``Shape`` (source ``generated``,
``shape_id = generated/<Category>/<index:05d>``); ``ShapEShapeGenerator`` adapts all of
it to the generator registry (``generation.generate("shap_e", ...)``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from distill.records import Mesh, Shape, ShapeError
from distill.sampling import derive_seed, shape_from_mesh
from generation import register_generator
from generation.filters import check_mesh
from generation.prompts import DEFAULT_STYLES, DEFAULT_TEMPLATES, make_prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "openai/shap-e"
SOURCE = "generated"
MAX_FACES = 200_000
"""Meshes with more faces are re-extracted on a coarser lattice (marching-cubes step 2, 3, ...):
the shape table stores every mesh, and 200k faces is already ~2 MB compressed."""
# Shap-E (z up, front towards −y) → ours (y up, front towards +z): (x, y, z) → (−x, z, y).
TO_OUR_FRAME = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


class ShapELoadError(RuntimeError):
    """The Shap-E pipeline cannot be loaded; the message names ``generation.model``."""


def resolve_device(device: str) -> str:
    """auto → cuda when available, else cpu; cpu / cuda as given (cuda must exist)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("generation.device=cuda but torch sees no CUDA device; use auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"generation.device={device!r} is not one of auto, cpu, cuda")
    return device


def load_pipeline(model: str, device: str, dtype: torch.dtype) -> Any:
    """``ShapEPipeline`` from a hub id or local directory, on ``device``.

    Raises ``ShapELoadError`` naming ``generation.model`` and the fix when it cannot be
    loaded (a missing directory, or a hub id neither cached nor downloadable).
    """
    from diffusers import ShapEPipeline

    # A hub id is "owner/name"; anything else that is no directory is a missing local path.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local and not os.path.isdir(os.path.expanduser(model)):
        raise ShapELoadError(f"generation.model={model!r}: no such directory (a ShapEPipeline save_pretrained folder)")
    try:
        # low_cpu_mem_usage needs accelerate; say so explicitly to skip diffusers' warning.
        low_mem = importlib.util.find_spec("accelerate") is not None
        pipe = ShapEPipeline.from_pretrained(os.path.expanduser(model), dtype=dtype, low_cpu_mem_usage=low_mem)
    except Exception as e:  # noqa: BLE001 - hub, IO and config errors all mean "cannot load"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapELoadError(
            f"generation.model={model!r} could not be loaded ({type(e).__name__}: {first}). Offline, point "
            "generation.model at a local copy: `huggingface-cli download openai/shap-e --local-dir DIR` on a "
            "machine with network, or pre-fill the Hugging Face cache (HF_HOME) of every worker."
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def mesh_from_sdf(grid: np.ndarray, max_faces: int = MAX_FACES) -> trimesh.Trimesh:
    """The zero level set of a signed-distance grid over [-1, 1]³, in our frame.

    grid: (G, G, G) float, positive inside, axis order (x, y, z) of Shap-E's lattice →
    a closed ``trimesh.Trimesh`` (outward faces); an empty one when the field has no
    zero crossing in the lattice (all outside, or all inside: the "object" would be the
    lattice's own box).
    """
    from skimage.measure import marching_cubes

    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 3 or len(set(grid.shape)) != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be a cubic (G, G, G) array, got {grid.shape}")
    if not np.isfinite(grid).all():
        raise ValueError("grid has NaN or inf values")
    g = grid.shape[0]
    # An outside border (the pipeline's -1 padding) closes surfaces cut by the box.
    if grid.max() <= 0.0 or grid.min() > 0.0:
        return trimesh.Trimesh()
    padded = np.pad(grid, 1, constant_values=-1.0)
    cell = 2.0 / (g - 1)
    step = 1
    while True:
        # Positive inside: "ascent" gives outward-facing (counter-clockwise) triangles.
        verts, faces, _, _ = marching_cubes(padded, level=0.0, gradient_direction="ascent", step_size=step)
        if len(faces) <= max_faces or step >= g // 8:
            break
        step += 1
    # Index i of the padded grid sits at lattice index i - 1, i.e. -1 + (i - 1) * cell.
    verts = (verts - 1.0) * cell - 1.0
    return trimesh.Trimesh(verts @ TO_OUR_FRAME.T, faces, process=False)


class ShapEGenerator:
    """A loaded Shap-E pipeline: prompts + seeds → latents → SDF grids → meshes.

    model: hub id or local directory (empty: ``openai/shap-e``) · device: auto | cpu |
    cuda · num_inference_steps, guidance_scale: the prior's diffusion (Shap-E's defaults
    64 and 15) · grid_size: SDF lattice a side (the pipeline's 128) · dtype: float16 on
    CUDA, float32 on CPU unless given · query_batch_size: SDF points per MLP call.
    """

    def __init__(
        self,
        model: str = "",
        device: str = "auto",
        num_inference_steps: int = 64,
        guidance_scale: float = 15.0,
        grid_size: int = 128,
        dtype: torch.dtype | None = None,
        query_batch_size: int | None = None,
        max_faces: int = MAX_FACES,
    ) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"generation.num_inference_steps={num_inference_steps} must be >= 1")
        if grid_size < 8:
            raise ValueError(f"generation.grid_size={grid_size} must be >= 8")
        self.model = model or DEFAULT_MODEL
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device == "cuda" else torch.float32)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.grid_size = grid_size
        self.max_faces = max_faces
        self.query_batch_size = query_batch_size or (1 << 18 if self.device == "cuda" else 1 << 15)
        self.pipe = load_pipeline(self.model, self.device, self.dtype)
        from diffusers.pipelines.shap_e.renderer import volume_query_points

        renderer = self.pipe.shap_e_renderer
        # (G³, 3) lattice over [-1, 1]³, x slowest, as the pipeline's decode_to_mesh.
        self._lattice = volume_query_points(renderer.volume, grid_size).to(self.device, self.dtype)

    def latents(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """prompts, seeds: B each → latents (B, num_embeddings, embedding_dim) on the device."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
        if not prompts:
            raise ValueError("no prompts")
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipe(
            list(prompts),
            generator=generators,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            output_type="latent",
        )
        return out.images

    @torch.no_grad()
    def sdf_grid(self, latent: torch.Tensor) -> np.ndarray:
        """latent: (num_embeddings, embedding_dim) → signed distances (G, G, G) float32 in
        [-1, 1] (tanh), positive inside, axis order (x, y, z) of Shap-E's frame."""
        renderer = self.pipe.shap_e_renderer
        projected = renderer.params_proj(latent[None].to(self.device, renderer.dtype))
        weights = {name.removeprefix("nerstf."): w[0] for name, w in projected.items()}
        values = []
        for start in range(0, len(self._lattice), self.query_batch_size):
            points = self._lattice[None, start : start + self.query_batch_size]
            out = torch.func.functional_call(
                renderer.mlp,
                weights,
                (),
                {"position": points, "direction": None, "ts": None, "nerf_level": "fine", "rendering_mode": "stf"},
                strict=False,
            )
            values.append(out.signed_distance[0, :, 0].float())
        g = self.grid_size
        return torch.cat(values).reshape(g, g, g).cpu().numpy()

    def sdf_grids(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        """Steps 1–2 for a batch: B × (G, G, G) float32."""
        return [self.sdf_grid(z) for z in self.latents(prompts, seeds)]

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[trimesh.Trimesh]:
        """prompts, seeds: B each → B meshes in our frame (empty where no surface formed)."""
        return [mesh_from_sdf(g, self.max_faces) for g in self.sdf_grids(prompts, seeds)]

    def meta(self) -> dict[str, Any]:
        """The settings that made a shape (stored in its ``meta``)."""
        return {
            "model": self.model,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "grid_size": self.grid_size,
        }


def generated_shape_id(category: str, index: int) -> str:
    return f"generated/{category}/{index:05d}"


def generated_shape(
    mesh: trimesh.Trimesh,
    category: str,
    index: int,
    part_names: list[str],
    num_points: int,
    sample_seed: int,
    meta: dict[str, Any],
) -> Shape:
    """An unlabelled ``Shape`` (source ``generated``, labels and face labels None) sampled
    from ``mesh``; ``meta`` (prompt, seed, model, ...) is stored with it."""
    return shape_from_mesh(
        generated_shape_id(category, index),
        category,
        part_names,
        Mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), None),
        num_points,
        sample_seed,
        source=SOURCE,
        meta={"index": int(index), **meta},
    )


class ShapEShapeGenerator:
    """Shap-E as a registry generator: ``(category, index, seed, num_points) -> Shape``.

    The pipeline is loaded at the first call (registering costs nothing) with the
    settings given here; a mesh failing ``check_mesh`` raises ``ShapeError`` with the
    reason. Re-register with other settings: ``register_generator("shap_e",
    ShapEShapeGenerator(model=DIR, ...))``.
    """

    def __init__(
        self,
        model: str = "",
        device: str = "auto",
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        styles: Sequence[str] = DEFAULT_STYLES,
        part_names: dict[str, list[str]] | None = None,
        check: bool = True,
        **generator_kwargs: Any,
    ) -> None:
        self.model, self.device = model, device
        self.templates, self.styles = tuple(templates), tuple(styles)
        self.part_names = dict(part_names or {})
        self.check = check
        self.generator_kwargs = generator_kwargs
        self._generator: ShapEGenerator | None = None

    @property
    def generator(self) -> ShapEGenerator:
        if self._generator is None:
            self._generator = ShapEGenerator(self.model, self.device, **self.generator_kwargs)
        return self._generator

    def __call__(self, category: str, index: int, seed: int, num_points: int = 2048) -> Shape:
        from distill.categories import part_names_for

        parts = part_names_for(category, self.part_names)
        shape_id = generated_shape_id(category, index)
        prompt = make_prompt(category, index, seed, self.templates, self.styles)
        diffusion_seed = derive_seed(seed, shape_id)
        (mesh,) = self.generator.generate([prompt], [diffusion_seed])
        reason = check_mesh(mesh, category) if self.check else None
        if reason is not None:
            raise ShapeError(f"shape {shape_id} ({prompt!r}): {reason}")
        meta = {"prompt": prompt, "seed": diffusion_seed, "generator": "shap_e", **self.generator.meta()}
        return generated_shape(mesh, category, index, parts, num_points, derive_seed(seed, shape_id + "/sample"), meta)


register_generator("shap_e", ShapEShapeGenerator())
