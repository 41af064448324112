"""Tiny Janus-Pro files for offline tests: a random checkpoint in the released key layout and a matching tokenizer.

write_tiny_janus(dir, layout="original" | "hf", seed=0) -> (ckpt_path, tokenizer_dir)
  original: dir/pytorch_model.bin with the key layout of deepseek-ai/Janus-Pro-1B: language_model.model.*,
            gen_embed.*, gen_aligner.layers.{0,2}.*, gen_head.*, gen_vision_model.* (incl. quantize.codebook_used)
            AND the understanding side janus.load_janus drops: vision_model.* (5 entries), aligner.layers.{0,2}.*
            (4), language_model.lm_head.weight (1) (deepseek-ai/Janus janus/models/modeling_vlm.py:190-219);
  hf:       dir/model.safetensors with the same tensors renamed as transformers' converted repos
            (deepseek-community/Janus-Pro-1B; models/janus/modeling_janus.py names), without codebook_used.
  tokenizer_dir = dir/tokenizer: a WordLevel tokenizer (built with the `tokenizers` library, saved with
  transformers.PreTrainedTokenizerFast.save_pretrained) whose BOS, pad and <begin_of_image> ids match
  janus.JANUS_CONFIGS["tiny"]; unknown words map to [UNK].
The weights are drawn larger than JanusGen's N(0, 0.02) init so the image-token distributions are far from uniform.
Used by tests/test_janus.py and the train.py tests (--backbone janus_pro_1b --janus_config tiny).
"""
import os
import re

import torch

import janus
import text_encoders

CFG = janus.JANUS_CONFIGS["tiny"]
SPECIALS = {"<｜begin▁of▁sentence｜>": CFG.bos_id, "<｜end▁of▁sentence｜>": 251, text_encoders.PAD: CFG.pad_id,
            text_encoders.BOI: CFG.boi_id, "<|User|>": 254, "<|Assistant|>": 255}
WORDS = ("a an the of on in at to with and is photo painting cat dog red green blue yellow white pink small large "
         "circle square triangle cross left right top bottom centre above below").split()
UNDERSTANDING = {  # a few random entries per dropped prefix (names as in the released file; shapes arbitrary)
    "vision_model.vision_tower.pos_embed": (1, 16, 32),
    "vision_model.vision_tower.patch_embed.proj.weight": (32, 3, 16, 16),
    "vision_model.vision_tower.patch_embed.proj.bias": (32,),
    "vision_model.vision_tower.blocks.0.attn.qkv.weight": (96, 32), "vision_model.vision_tower.norm.weight": (32,),
    "aligner.layers.0.weight": (64, 32), "aligner.layers.0.bias": (64,), "aligner.layers.2.weight": (64, 64),
    "aligner.layers.2.bias": (64,), "language_model.lm_head.weight": (CFG.vocab_size, CFG.dim)}
# original -> HF-converted names (the inverse of janus.HF_TO_ORIGINAL), applied in order. Written out on its own on
# purpose (not derived from janus.HF_TO_ORIGINAL): the layout test must not trust the map it checks.
ORIGINAL_TO_HF = [
    (r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_model\.vision_tower\.", "model.vision_model."), (r"^aligner\.layers\.0\.", "model.aligner.fc1."),
    (r"^aligner\.layers\.2\.", "model.aligner.hidden_layers.0."), (r"^gen_embed\.", "model.generation_embeddings."),
    (r"^gen_aligner\.layers\.0\.", "model.generation_aligner.fc1."),
    (r"^gen_aligner\.layers\.2\.", "model.generation_aligner.hidden_layers.0."),
    (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
    (r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.res\.", r"gen_vision_model.encoder.down.\1.block."),
    (r"^gen_vision_model\.encoder\.conv_blocks\.", "gen_vision_model.encoder.down."),
    (r"^gen_vision_model\.decoder\.conv_blocks\.(\d+)\.res\.", r"gen_vision_model.decoder.up.\1.block."),
    (r"^gen_vision_model\.decoder\.conv_blocks\.", "gen_vision_model.decoder.up."),
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.0\.", r"\1.block_1."),
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.1\.", r"\1.attn_1."),
    (r"^(gen_vision_model\.(?:en|de)coder\.mid)\.2\.", r"\1.block_2."),
    (r"^gen_vision_model\.", "model.vqmodel."),
]


def to_hf_key(key: str) -> str:
    for pat, rep in ORIGINAL_TO_HF:
        key = re.sub(pat, rep, key)
    return key


def random_tiny(seed: int = 0, std: float = 0.15):
    """A tiny JanusGen and its VQModel with random weights (norm weights 1 + noise), eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = janus.JanusGen(CFG, seed=seed)
    vqm = janus.VQModel(janus.janus_vq_config(CFG), generator=g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval(), vqm.eval()


def original_state_dict(seed: int = 0) -> dict:
    """The released layout, understanding side included (see the module docstring)."""
    model, vqm = random_tiny(seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd = dict(model.state_dict())
    sd.update({f"gen_vision_model.{k}": v for k, v in vqm.state_dict().items()})
    sd.update({k: torch.randn(s, generator=g) * 0.02 for k, s in UNDERSTANDING.items()})
    return {k: v.clone().contiguous() for k, v in sd.items()}


def write_tokenizer(d: str) -> str:
    """A WordLevel tokenizer over WORDS + ':' ',' '.', the specials at CFG's ids, BOS prepended on encode."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[UNK]", ":", ",", "."] + list(WORDS))}
    assert len(vocab) < min(SPECIALS.values())
    vocab.update(SPECIALS)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    bos = "<｜begin▁of▁sentence｜>"
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, CFG.bos_id)])
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token="<｜end▁of▁sentence｜>",
                            pad_token=text_encoders.PAD, unk_token="[UNK]").save_pretrained(d)
    return d


def write_tiny_janus(d, layout: str = "original", seed: int = 0):
    """-> (checkpoint path, tokenizer folder) under d (see the module docstring)."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    sd = original_state_dict(seed)
    if layout == "original":
        path = os.path.join(d, "pytorch_model.bin")
        torch.save(sd, path)
    elif layout == "hf":
        from safetensors.torch import save_file
        path = os.path.join(d, "model.safetensors")
        save_file({to_hf_key(k): v for k, v in sd.items() if not k.endswith("quantize.codebook_used")}, path)
    else:
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")
    return path, write_tokenizer(os.path.join(d, "tokenizer"))
