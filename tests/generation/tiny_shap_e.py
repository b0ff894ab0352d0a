"""A tiny random-weight Shap-E text-to-3D pipeline, built offline, for tests and benchmarks.

``build_tiny_shap_e(directory)`` assembles diffusers' ``ShapEPipeline`` from tiny seeded
components (prior transformer, CLIP text encoder with projection, a CLIP BPE tokenizer
built from a local word list, the Heun scheduler real Shap-E uses, and a Shap-E renderer
with a 8-wide MLP) and writes it with ``save_pretrained``, so a test points
``generation.model`` at the directory exactly as at a downloaded ``openai/shap-e``.

The component sizes follow diffusers' own fast tests of the pipeline; the scheduler's
settings are the real checkpoint's. Random weights make meaningless shapes: the tiny
model checks plumbing (loading, batching, seeds, decoding, records), not quality.
``REAL_PRIOR`` gives the real checkpoint's prior size for cost estimates (random weights
of real size cost what the real model costs to run).
"""

from __future__ import annotations

import os

import torch

from tests.distill.tiny_models import WORDS, clip_tokenizer

STYLE_WORDS = tuple("modern wooden metal simple vintage futuristic small tall sturdy 3d model".split())

TEXT_HIDDEN = 32
"""Text embedding width = the prior's ``embedding_proj_dim`` and the CLIP projection."""
LATENT_DIM = 32
"""The prior's token width (``embedding_dim``) = the renderer's ``d_latent``."""
RENDERER_DIM = 8
"""Width of the renderer's implicit MLP (real: 256)."""

REAL_PRIOR = {
    "num_attention_heads": 16,
    "attention_head_dim": 64,
    "num_layers": 24,
    "embedding_dim": 1024,
    "num_embeddings": 1024,
    "additional_embeddings": 0,
    "time_embed_act_fn": "gelu",
    "time_embed_dim": 4096,
    "clip_embed_dim": 2048,
    "embedding_proj_dim": 768,
    "norm_in_type": "layer",
    "encoder_hid_proj_type": None,
    "added_emb_type": None,
}
"""``PriorTransformer`` kwargs of openai/shap-e's text prior (diffusers' conversion script:
16 heads × 64, 24 layers, 1024 tokens of 1024, out 2048, CLIP ViT-L/14 text, 768-d)."""


def _scheduler():
    from diffusers import HeunDiscreteScheduler

    # openai/shap-e's scheduler config.
    return HeunDiscreteScheduler(
        beta_schedule="exp",
        num_train_timesteps=1024,
        prediction_type="sample",
        use_karras_sigmas=True,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def build_tiny_shap_e(directory: str, seed: int = 0, real_size_prior: bool = False) -> str:
    """Tiny ``ShapEPipeline`` saved into ``directory`` with ``save_pretrained``; returns it.

    real_size_prior: use the real checkpoint's prior (≈ 300M parameters, random) and a
    real-width renderer instead of the tiny ones, for cost measurements only.
    """
    from diffusers import PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(tuple(WORDS) + STYLE_WORDS, model_max_length=16)
    torch.manual_seed(seed)
    text_hidden = 768 if real_size_prior else TEXT_HIDDEN
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            projection_dim=text_hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    if real_size_prior:
        prior = PriorTransformer(**REAL_PRIOR)
        renderer = ShapERenderer()  # the real defaults: d_latent 1024, MLP 256 wide
    else:
        prior = PriorTransformer(
            num_attention_heads=2,
            attention_head_dim=16,
            embedding_dim=LATENT_DIM,
            num_embeddings=32,
            embedding_proj_dim=TEXT_HIDDEN,
            time_embed_dim=LATENT_DIM * 4,
            num_layers=1,
            clip_embed_dim=LATENT_DIM * 2,
            additional_embeddings=0,
            time_embed_act_fn="gelu",
            norm_in_type="layer",
            encoder_hid_proj_type=None,
            added_emb_type=None,
        )
        torch.manual_seed(seed + 2)
        # The prior's 32 latent tokens become the rows of the MLP's first 4 weight matrices
        # (8 tokens each: param_shapes' first numbers sum to num_embeddings); the first
        # layer reads the 93-d position encoding.
        d = RENDERER_DIM
        renderer = ShapERenderer(
            param_shapes=((d, 93), (d, d), (d, d), (d, d)),
            d_latent=LATENT_DIM,
            d_hidden=RENDERER_DIM,
            n_output=12,
            background=(0.1, 0.1, 0.1),
        )
    pipe = ShapEPipeline(
        prior=prior,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        shap_e_renderer=renderer,
    )
    os.makedirs(directory, exist_ok=True)
    pipe.save_pretrained(directory)
    return directory
