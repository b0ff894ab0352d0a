"""Tiny random-weight vision-language models, built offline, for tests.

Each ``build_tiny_*`` writes a model and everything its teacher loads (config, weights,
tokenizer, image processor) into a directory with ``save_pretrained`` and returns that
directory, so a test can point ``teacher.model`` at it exactly as at a downloaded hub
checkpoint. No network: tokenizers are built from a word list written here, and the
special tokens sit where the real checkpoints have them, because the models depend on it:

* CLIP-style BPE (OWLv2, CLIPSeg): ``<|startoftext|>``/``<|endoftext|>`` are the two last
  ids (49406/49407 in real CLIP). OWL masks queries with ``input_ids[:, 0] > 0`` and pools
  the text at ``input_ids.argmax()``, so a BOS of 0 or an EOS below the other ids breaks it.
* BERT WordPiece (Grounding DINO): ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
  ``.`` 1012, ``?`` 1029 as in bert-base-uncased, because Grounding DINO hard-codes
  ``SPECIAL_TOKENS = [101, 102, 1012, 1029]`` to split the caption into phrases.

Models are seeded and small (hidden size 32, 1–2 layers, 32–64 pixel inputs) so that one
forward pass of a few views takes well under a second on a CPU. Plain functions: Ray tests
reuse them.
"""

from __future__ import annotations

import os

import torch

# Words the tokenizers know whole; anything else falls back to characters (BPE bytes or
# WordPiece letters), so every prompt tokenizes.
WORDS = (
    "a an of the photo part "
    "nose cone front back leg legs wing body tail seat arm armrest handle lid base top "
    "bottom head neck shade lamp mug chair table airplane car wheel door window engine "
    "blade knife cap bag strap earphone guitar laptop keyboard screen motorbike pistol "
    "rocket skateboard fin"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable unicode character table (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_tokenizer(words: tuple[str, ...] | list[str] = WORDS, model_max_length: int = 16):
    """A CLIP BPE tokenizer over ``words`` with the special tokens last (real CLIP layout).

    Vocabulary: every byte character alone and word-final (``c</w>``), then for each word
    the left-to-right merges that build it, then ``<|startoftext|>``, ``<|endoftext|>``.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merged = prefix + piece
            if merged not in vocab:
                merges.append((prefix, piece))
                vocab[merged] = len(vocab)
            prefix = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def bert_tokenizer(words: tuple[str, ...] | list[str] = WORDS):
    """An uncased BERT WordPiece tokenizer over ``words`` with bert-base-uncased's special ids."""
    from transformers import BertTokenizer

    fixed = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    free = [c for c in letters + ",;:!'\"-_()/&+"] + ["##" + c for c in letters] + list(words)
    tokens = [""] * 1030
    for i, t in fixed.items():
        tokens[i] = t
    it = iter(free)
    for i in range(104, 1030):
        if not tokens[i]:
            tokens[i] = next(it, f"[unused{i}]")
    for i in range(1, 100):
        tokens[i] = f"[unused{i}]"
    assert next(it, None) is None, "tiny BERT vocabulary overflow: shorten WORDS"
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})


def _clip_text_config(tokenizer, hidden: int = 32) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_owlv2(directory: str, seed: int = 0, image_size: int = 32) -> str:
    """Tiny ``Owlv2ForObjectDetection`` (+ processor) saved into ``directory``; returns it.

    image_size/8 patches a side → (image_size/8)² candidate boxes per view.
    """
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    tokenizer = clip_tokenizer()
    config = Owlv2Config(
        text_config=_clip_text_config(tokenizer),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=32,  # OWL needs projection_dim == text hidden size
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def build_tiny_clipseg(directory: str, seed: int = 0, image_size: int = 32) -> str:
    """Tiny ``CLIPSegForImageSegmentation`` (+ processor) saved into ``directory``; returns it.

    Its logits are (image_size, image_size) per (image, prompt) pair.
    """
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    tokenizer = clip_tokenizer(model_max_length=16)
    config = CLIPSegConfig(
        text_config=_clip_text_config(tokenizer),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=32,
        extract_layers=[1],  # must index layers below num_hidden_layers
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    image_processor = ViTImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def build_tiny_grounding_dino(directory: str, seed: int = 0, image_size: int = 128) -> str:
    """Tiny ``GroundingDinoForObjectDetection`` (+ processor) saved into ``directory``; returns it.

    10 queries → at most 10 boxes per view; 2 decoder layers (the model needs ≥ 2). Images
    are resized to image_size: at 64 the extra feature level is 1×1 and its GroupNorm
    (one channel per group) rejects a batch of one image.
    """
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tokenizer = bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        max_text_len=64,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": image_size, "longest_edge": image_size})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def build_tiny_sam(directory: str, seed: int = 0, image_size: int = 64) -> str:
    """Tiny ``SamModel`` (+ ``SamProcessor``) saved into ``directory``; returns it.

    Images are resized (longest edge) and padded to image_size; masks come out at
    image_size/4 a side before the processor resizes them back to the view.
    """
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    patch = 8
    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            image_size=image_size,
            patch_size=patch,
            global_attn_indexes=[1],
            window_size=4,
            num_pos_feats=8,  # positional features = 2 × 8 = the prompt encoder's width
        ),
        prompt_encoder_config=dict(
            hidden_size=16,
            image_size=image_size,
            patch_size=patch,
            mask_input_channels=4,
        ),
        mask_decoder_config=dict(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            iou_head_hidden_dim=16,
        ),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    side = image_size // patch * 4  # the mask decoder upsamples the embedding grid 4×
    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": side},
        mask_pad_size={"height": side, "width": side},
    )
    processor = SamProcessor(image_processor=image_processor)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


__all__ = [
    "WORDS",
    "bert_tokenizer",
    "build_tiny_clipseg",
    "build_tiny_grounding_dino",
    "build_tiny_owlv2",
    "build_tiny_sam",
    "clip_tokenizer",
]


if __name__ == "__main__":  # build all four into a folder, e.g. for a manual try
    import sys

    root = sys.argv[1] if len(sys.argv) > 1 else "tiny_models"
    for name, build in [
        ("owlv2", build_tiny_owlv2),
        ("clipseg", build_tiny_clipseg),
        ("grounding_dino", build_tiny_grounding_dino),
        ("sam", build_tiny_sam),
    ]:
        print(build(os.path.join(root, name)))
