"""Text-to-3D with Shap-E (generation/shap_e.py) on a tiny random-weight pipeline, and prompts.

The pipeline is built offline and saved with ``save_pretrained`` (tests/generation/
tiny_shap_e.py), then loaded through the real code. Random weights make meaningless
shapes: these tests check loading, seeding, batching, decoding, frames and records.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import generation
from distill.records import ShapeError, shapes_to_table, table_to_shapes
from generation.config import GenerationConfig
from generation.prompts import DEFAULT_STYLES, DEFAULT_TEMPLATES, check_templates, make_prompt
from generation.shap_e import (
    SOURCE,
    ShapEGenerator,
    ShapELoadError,
    ShapEShapeGenerator,
    generated_shape,
    mesh_from_sdf,
)

GRID = 24
STEPS = 2


@pytest.fixture(scope="module")
def gen(tiny_dir):
    return ShapEGenerator(tiny_dir, device="cpu", num_inference_steps=STEPS, grid_size=GRID)


def _ball_grid(g: int, center=(0.0, 0.0, 0.0), radius: float = 0.5) -> np.ndarray:
    """Signed distances (positive inside) of a ball on Shap-E's [-1, 1]³ lattice, axes (x, y, z)."""
    x = np.linspace(-1.0, 1.0, g)
    xs, ys, zs = np.meshgrid(x, x, x, indexing="ij")
    return (radius - np.sqrt((xs - center[0]) ** 2 + (ys - center[1]) ** 2 + (zs - center[2]) ** 2)).astype(np.float32)


# -- decoding: SDF lattice → mesh ---------------------------------------------------------
def test_mesh_from_sdf_ball_is_closed_outward_and_the_right_size():
    mesh = mesh_from_sdf(_ball_grid(48))
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.5**3, rel=0.03)  # > 0: faces point outward
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 0.5, atol=0.02)


def test_mesh_from_sdf_maps_shap_e_up_to_our_up():
    # Shap-E stands objects on +z; ours on +y (front +z): (x, y, z) → (−x, z, y).
    for shap_e_center, ours in [((0, 0, 0.4), (0, 0.4, 0)), ((0.4, 0, 0), (-0.4, 0, 0)), ((0, 0.4, 0), (0, 0, 0.4))]:
        mesh = mesh_from_sdf(_ball_grid(40, shap_e_center, 0.3))
        np.testing.assert_allclose(mesh.vertices.mean(axis=0), ours, atol=0.02)
        assert mesh.volume > 0  # a proper rotation keeps faces outward


def test_mesh_from_sdf_closes_surfaces_cut_by_the_box_and_handles_no_surface():
    # A ball bigger than the lattice: the outside border closes it (the pipeline's -1 padding).
    assert mesh_from_sdf(_ball_grid(20, radius=1.2)).is_watertight
    assert len(mesh_from_sdf(-np.ones((16, 16, 16), np.float32)).faces) == 0  # all outside
    assert len(mesh_from_sdf(np.ones((16, 16, 16), np.float32)).faces) == 0  # all inside: no object
    with pytest.raises(ValueError, match="cubic"):
        mesh_from_sdf(np.zeros((4, 5, 6)))


def test_mesh_from_sdf_coarsens_past_max_faces():
    fine = mesh_from_sdf(_ball_grid(64))
    coarse = mesh_from_sdf(_ball_grid(64), max_faces=len(fine.faces) // 2)
    assert len(coarse.faces) <= len(fine.faces) // 2
    assert coarse.volume == pytest.approx(fine.volume, rel=0.05)


# -- the pipeline ------------------------------------------------------------------------
def test_generate_returns_closed_meshes_in_the_unit_box(gen):
    meshes = gen.generate(["a modern chair", "a wooden table", "a lamp"], [0, 1, 2])
    assert len(meshes) == 3 and all(isinstance(m, trimesh.Trimesh) for m in meshes)
    nonempty = [m for m in meshes if len(m.faces)]
    assert nonempty, "the tiny model's seeds 0-2 give at least one surface"
    for m in nonempty:
        assert m.is_watertight and m.volume > 0
        # Surfaces cut by the lattice's box close on the outside border, up to a cell out.
        assert np.abs(m.vertices).max() <= 1.0 + 2.0 / (GRID - 1) + 1e-5


def test_same_seed_same_mesh_other_seed_other_mesh(gen):
    a = gen.sdf_grids(["a chair"], [5])[0]
    b = gen.sdf_grids(["a chair"], [5])[0]
    c = gen.sdf_grids(["a chair"], [6])[0]
    assert a.shape == (GRID, GRID, GRID) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_a_shape_does_not_depend_on_its_batch(gen):
    batch = gen.latents(["a chair", "a metal table", "a lamp"], [3, 4, 5])
    alone = gen.latents(["a metal table"], [4])
    assert batch.shape[0] == 3 and batch.shape[1:] == alone.shape[1:]
    torch.testing.assert_close(batch[1], alone[0], atol=1e-3, rtol=1e-2)  # float32 batch-size noise
    with pytest.raises(ValueError, match="one seed per prompt"):
        gen.latents(["a", "b"], [1])


def test_sdf_query_matches_the_pipelines_own_decoder(gen):
    """Our lattice is exactly the field diffusers' decode_to_mesh hands its marching cubes."""
    from diffusers.pipelines.shap_e.renderer import MeshDecoderOutput

    latent = gen.latents(["a chair"], [7])[0]
    ours = gen.sdf_grid(latent)
    renderer = gen.pipe.shap_e_renderer
    seen = {}

    def capture(field, min_point, size):
        seen["field"] = field.detach().cpu().numpy()
        return MeshDecoderOutput(verts=torch.zeros(3, 3), faces=torch.zeros(1, 3, dtype=torch.long), vertex_channels={})

    original = renderer.mesh_decoder.forward
    renderer.mesh_decoder.forward = capture
    try:
        renderer.decode_to_mesh(latent[None], "cpu", grid_size=GRID)
    finally:
        renderer.mesh_decoder.forward = original
    field = seen["field"]
    assert field.shape == (GRID + 2,) * 3 and (field[0] == -1).all()  # its -1 border
    np.testing.assert_allclose(field[1:-1, 1:-1, 1:-1], ours, atol=1e-5)


def test_load_errors_name_the_config_key(tmp_path):
    with pytest.raises(ShapELoadError, match=r"generation.model='.*missing'.*no such directory"):
        ShapEGenerator(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShapELoadError, match="generation.model=.*could not be loaded"):
        ShapEGenerator(str(tmp_path / "empty"), device="cpu")
    # A hub id that does not exist: offline or online, loading fails with the fix named.
    with pytest.raises(ShapELoadError, match="generation.model='partdistill-tests/no-such-model'.*local copy"):
        ShapEGenerator("partdistill-tests/no-such-model", device="cpu")


# -- records and the registry -------------------------------------------------------------
def test_generated_shape_is_an_unlabelled_generated_record():
    mesh = mesh_from_sdf(_ball_grid(32))
    meta = {"prompt": "a ball", "seed": 11, "model": "m"}
    shape = generated_shape(mesh, "Chair", 7, ["back", "seat", "leg", "armrest"], 128, 0, meta)
    assert shape.shape_id == "generated/Chair/00007" and shape.source == SOURCE == "generated"
    assert shape.labels is None and shape.mesh.face_labels is None
    assert shape.points.shape == (128, 3) and np.linalg.norm(shape.points, axis=1).max() <= 1.0 + 1e-5
    assert shape.meta["prompt"] == "a ball" and shape.meta["seed"] == 11 and shape.meta["index"] == 7
    (back,) = table_to_shapes(shapes_to_table([shape]))
    assert back.labels is None and back.meta["model"] == "m"
    np.testing.assert_array_equal(back.points, shape.points)


def test_registry_generator(tiny_dir):
    assert isinstance(generation.GENERATORS["shap_e"], ShapEShapeGenerator)
    default = generation.GENERATORS["shap_e"]
    tiny = ShapEShapeGenerator(tiny_dir, device="cpu", num_inference_steps=STEPS, grid_size=GRID)
    generation.register_generator("shap_e", tiny)
    try:
        made, rejected = [], []
        for index in range(5):
            try:
                made.append(generation.generate("shap_e", "chair", index, seed=0, num_points=64))
            except ShapeError as e:
                rejected.append(str(e))
        assert len(made) + len(rejected) == 5
        assert rejected and all("generated/chair/" in r and ":" in r for r in rejected)
        for s in made:
            assert s.source == "generated" and s.labels is None and s.num_points == 64
            assert s.part_names == ["back", "seat", "leg", "armrest"]
            assert s.meta["prompt"] == make_prompt("chair", s.meta["index"], 0)
            assert s.meta["model"] == tiny_dir
    finally:
        generation.register_generator("shap_e", default)


# -- prompts ------------------------------------------------------------------------------
def test_prompts_are_deterministic_and_cover_every_pair_per_cycle():
    pairs = len(DEFAULT_TEMPLATES) * len(DEFAULT_STYLES)
    first = [make_prompt("Chair", i, 0) for i in range(pairs)]
    assert len(set(first)) == pairs  # every (template, style) once per cycle
    assert first == [make_prompt("Chair", i, 0) for i in range(pairs)]
    assert [make_prompt("Chair", i, 1) for i in range(pairs)] != first  # another seed, another order
    assert all("chair" in p for p in first)
    assert make_prompt("Chair", 3, 0) == make_prompt("chair", 3, 0)


def test_prompt_templates_and_nouns():
    assert make_prompt("Airplane", 0, 0, ["a {category}"], []) == "an airplane"
    assert make_prompt("FourLeg", 0, 0, ["a {category}"], []) == "a four-legged animal"
    assert make_prompt("Lamp", 0, 0, ["a {style} {category}"], ["tall"]) == "a tall lamp"
    for bad, match in [([], "empty"), (["a {style}"], "category"), (["a {color} {category}"], "color")]:
        with pytest.raises(ValueError, match=f"generation.templates.*{match}|{match}"):
            check_templates(bad, ["x"])
    with pytest.raises(ValueError, match="generation.styles is empty"):
        check_templates(["a {style} {category}"], [])


def test_prompt_defaults_match_the_config_defaults():
    cfg = GenerationConfig()
    assert list(DEFAULT_TEMPLATES) == cfg.templates and list(DEFAULT_STYLES) == cfg.styles
