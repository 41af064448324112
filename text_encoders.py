"""Caption encoders of the policy: captions -> (cond float32 (B,T,D), cond_mask bool (B,T)), left-aligned.

Concept (arXiv 2605.21195 conditions LlamaGen on FLAN-T5-XL caption features; docs/method.md §13.9, D11 in §14):
the policy (policy.py) reads T caption slots. One text convention everywhere (D11): the L valid feature vectors of a
caption fill the LAST L slots, pads first and zeroed, mask True on valid slots. Two encoders produce it:
T5TextEncoder (FLAN-T5-XL, the real backbone, loaded lazily from a local directory or the hub) and WordTextEncoder
(seeded word vectors + positions, no parameters: the toy world's stand-in). clean_caption is LlamaGen's caption
cleaning before T5 (PixArt's cleaner twice, ftfy + bs4; exact). Janus-Pro-1B reads token ids instead (its LLM embeds
them): JanusTextEncoder wraps each caption in the chat template and left-pads -> (ids int64 (B,T), mask bool (B,T)).

Run the self-check (CPU, < 1 s): python text_encoders.py   Tests: pytest -q tests/test_text_encoders.py
Copy alone: imports torch (transformers when T5 is first called, ftfy + bs4 when clean_caption is), no repository
file.
Symbols: B captions, T caption slots (max_len = the policy's cls_token_num), D feature width (caption_dim),
L valid slots of a caption.
Follows: FoundationVision/LlamaGen@ce98ec4 language/t5.py, autoregressive/sample/sample_t2i.py:92-106,
dataset/t2i.py:114-122; syjmelody/RankE@2798acc janus/post_train/trainer.py:336-354 and deepseek-ai/Janus@1daa72f
processing_vlm.py:137-213 (the Janus prompt). Written from the spec, not copied.
"""
from __future__ import annotations

import html
import math
import re
import string
import urllib.parse
import warnings

import torch


def left_align(feats: torch.Tensor, mask: torch.Tensor):
    """Right-padded (B,T,D) features + (B,T) mask -> each row rotated so its L valid vectors fill the LAST L slots,
    mask flipped to pads-first, pads zeroed (sample_t2i.py:92-106; as in training, dataset/t2i.py:114-122)."""
    B, T = mask.shape
    L = mask.long().sum(1)                                                        # (B,)
    ar = torch.arange(T, device=mask.device)
    if not torch.equal(mask.bool(), ar[None] < L[:, None]):
        raise ValueError("left_align expects right-padded masks (valid tokens first, then pads)")
    src = (ar[None] + L[:, None]) % T                                             # (B,T) source slot per output slot
    out = feats.gather(1, src[..., None].expand_as(feats))                        # (B,T,D)
    new_mask = ar[None] >= (T - L)[:, None]                                       # (B,T) pads first
    return out * new_mask[..., None].to(out.dtype), new_mask


def clean_caption(text: str) -> str:
    """Caption -> the text LlamaGen's T5Embedder.text_preprocessing hands to the T5 tokenizer: PixArt's caption
    cleaner, run TWICE (the second pass sees the first pass's output). Lowercases and strips. Needs ftfy and
    beautifulsoup4 (imported on the first call). Follows LlamaGen language/t5.py:81-201 (same as RankE's t5.py);
    each rule below is upstream's, in upstream's order, quirks included. Quirks kept on purpose: the second URL rule
    matches "www:" (not "www."); lowercasing comes before the HTML / ftfy decoding, so what those decode keeps its
    case until the second pass; the whitespace is not stripped before the outer-quote rule (upstream discards that
    strip's result)."""
    import ftfy
    from bs4 import BeautifulSoup

    url_tail = r"|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))"
    t = str(text)
    for _ in range(2):
        t = urllib.parse.unquote_plus(t).strip().lower()
        t = t.replace("<person>", "person")                                      # before the HTML rule
        t = re.sub(r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])" + url_tail, "", t)   # URLs and bare domains
        t = re.sub(r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])" + url_tail, "", t)
        with warnings.catch_warnings():        # bs4 warns when a caption looks like a file name or URL; output same
            warnings.simplefilter("ignore")
            t = BeautifulSoup(t, features="html.parser").text                   # HTML tags out, entities decoded
        t = re.sub(r"@[\w\d]+\b", "", t)                                         # @handles
        t = re.sub(r"[\u31c0-\u9fff]+", "", t)      # CJK strokes .. unified ideographs (upstream: 7 adjacent ranges)
        t = re.sub(r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
                   r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+", "-", t)                   # any run of dashes -> one "-"
        t = re.sub(r"[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]", '"', t)          # ` ´ « » “ ” ¨ -> "
        t = re.sub(r"[\u2018\u2019]", "'", t)                                    # ‘ ’ -> '
        t = re.sub(r"&quot;?", "", t)
        t = re.sub(r"&amp", "", t)
        t = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", t)               # IPv4 addresses
        t = re.sub(r"\d:\d\d\s+$", "", t)                                        # trailing article ids
        t = re.sub(r"\\n", " ", t)                                               # a literal backslash-n
        t = re.sub(r"#\d{1,3}\b", "", t)                                         # #123
        t = re.sub(r"#\d{5,}\b", "", t)                                          # #12345...
        t = re.sub(r"\b\d{6,}\b", "", t)                                         # 123456...
        t = re.sub(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", "", t)  # file names
        t = re.sub(r"[\"\']{2,}", '"', t)                                        # runs of quotes -> "
        t = re.sub(r"[\.]{2,}", " ", t)                                          # ".." and longer -> space
        t = re.sub(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\\/\*]{1,}", " ", t)        # bad punctuation -> space
        t = re.sub(r"\s+\.\s+", " ", t)                                          # a lone " . "
        if len(re.findall(r"(?:\-|\_)", t)) > 3:                                 # this-is-my-cute-cat
            t = re.sub(r"(?:\-|\_)", " ", t)
        t = html.unescape(html.unescape(ftfy.fix_text(t))).strip()               # upstream's basic_clean
        t = re.sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", t)                          # jc6640
        t = re.sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", t)                          # jc6640vc
        t = re.sub(r"\b\d+[a-zA-Z]+\d+\b", "", t)                                # 6640vc231
        t = re.sub(r"(worldwide\s+)?(free\s+)?shipping", "", t)
        t = re.sub(r"(free\s)?download(\sfree)?", "", t)
        t = re.sub(r"\bclick\b\s(?:for|on)\s\w+", "", t)
        t = re.sub(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", "", t)
        t = re.sub(r"\bpage\s+\d+\b", "", t)
        t = re.sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " ", t)        # j2d1a2a...
        t = re.sub(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b", "", t)              # 10x20 (x, Cyrillic \u0445, \u00d7)
        t = re.sub(r"\b\s+\:\s+", ": ", t)
        t = re.sub(r"(\D[,\./])\b", r"\1 ", t)                                   # space after , . / inside words
        t = re.sub(r"\s+", " ", t)                     # NOT stripped here (upstream's strip result is discarded)
        t = re.sub(r"^[\"\']([\w\W]+)[\"\']$", r"\1", t)                         # outer quotes (only if no edge space)
        t = re.sub(r"^[\'\_,\-\:;]", "", t)
        t = re.sub(r"[\'\_,\-\:\-\+]$", "", t)
        t = re.sub(r"^\.\S+$", "", t)
        t = t.strip()
    return t


# The T5 encoders' sizes (what `backbones.MODELS` names; perf/synthetic.py builds them with random weights; a real run
# reads the same numbers from the model's config.json): FLAN-T5-XL = google/flan-t5-xl config.json (T5 v1.1 XL),
# gated-GELU (gelu_new) feed-forward, relative attention 32 buckets / distance 128.
T5_CONFIGS = {"flan-t5-xl": dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                 feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)}


def cannot_load(who: str, path: str, e: Exception, fix: str) -> FileNotFoundError:
    """The error of an encoder whose files are not here (offline hub, wrong folder): what failed, then the fix."""
    return FileNotFoundError(f"{who}: cannot load {path!r} ({type(e).__name__}: {str(e)[:300]}). {fix}")


class T5TextEncoder:
    """FLAN-T5-XL encoder (language/t5.py; docs/method.md §13.9), loaded lazily on the first call. The model hub is
    never required: pass a local directory holding the HF files of google/flan-t5-xl."""

    def __init__(self, path_or_name="google/flan-t5-xl", max_len=120, dtype=torch.bfloat16, device="cpu"):
        self.path, self.max_len, self.dtype, self.device = path_or_name, max_len, dtype, torch.device(device)
        self.tokenizer = self.model = None

    @torch.no_grad()
    def __call__(self, captions: list[str]):
        captions = [captions] if isinstance(captions, str) else captions
        if self.model is None:  # lazy load
            import transformers as tf
            key = "dtype" if tuple(map(int, tf.__version__.split(".")[:2])) >= (4, 56) else "torch_dtype"  # renamed
            try:
                self.tokenizer = tf.AutoTokenizer.from_pretrained(self.path)
                self.model = tf.T5EncoderModel.from_pretrained(self.path, **{key: self.dtype}).to(self.device).eval()
            except (OSError, ValueError) as e:  # offline hub / missing files: chained, not swallowed
                raise cannot_load("T5TextEncoder", self.path, e,
                                  "Put the HF files of google/flan-t5-xl in a local directory, e.g. `hf "
                                  "download google/flan-t5-xl --local-dir pretrained_models/t5-ckpt/flan-t5-xl` on a "
                                  "machine with network, and pass that directory (--t5_path).") from e
        batch = self.tokenizer([clean_caption(c) for c in captions], max_length=self.max_len, padding="max_length",
                               truncation=True, add_special_tokens=True, return_tensors="pt")   # right padding, </s>
        ids, am = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)        # (B,T)
        h = self.model(input_ids=ids, attention_mask=am).last_hidden_state                     # (B,T,2048)
        return left_align(h.float(), am.bool())


class WordTextEncoder:
    """Light text encoder for a small word vocabulary (toy world): fixed seeded random word vectors (unit scale) plus
    sinusoidal positions (index of the word in its caption), no trainable parameters; same left-aligned output as
    T5TextEncoder. Tokenisation: lowercase, whitespace split, punctuation stripped from both ends of each word."""

    def __init__(self, vocab: list[str], dim: int, max_len: int, seed: int = 0, device="cpu"):
        words = [w for v in vocab for w in self.tokenize(v)]
        if len(words) != len(vocab) or len(set(words)) != len(words) or dim % 2:
            raise ValueError("vocab must hold distinct single words (after lowercase / punctuation strip), dim even")
        self.index, self.max_len, self.device = {w: i for i, w in enumerate(words)}, max_len, torch.device(device)
        self.table = torch.randn(len(words), dim, generator=torch.Generator().manual_seed(seed)) / math.sqrt(dim)
        pos = torch.arange(max_len).float()[:, None] * 10000.0 ** (-torch.arange(0, dim, 2).float() / dim)  # (L, D/2)
        self.pos = torch.stack([pos.sin(), pos.cos()], -1).flatten(1) / math.sqrt(dim / 2)   # (max_len, D) unit rows

    @staticmethod
    def tokenize(caption: str) -> list[str]:
        return [w for w in (t.strip(string.punctuation) for t in caption.lower().split()) if w]

    def __call__(self, captions: list[str]):
        captions = [captions] if isinstance(captions, str) else captions   # like the T5 tokenizer
        feats = torch.zeros(len(captions), self.max_len, self.table.shape[1])
        mask = torch.zeros(len(captions), self.max_len, dtype=torch.bool)
        for b, c in enumerate(captions):
            words = self.tokenize(c)
            bad = [w for w in words if w not in self.index]
            if bad or not 1 <= len(words) <= self.max_len:
                raise ValueError(f"unknown word {bad[0]!r} in caption {c!r}: not in the encoder's vocabulary" if bad
                                 else f"caption {c!r} has {len(words)} words; need 1..max_len={self.max_len}")
            feats[b, :len(words)] = self.table[[self.index[w] for w in words]] + self.pos[:len(words)]
            mask[b, :len(words)] = True
        cond, m = left_align(feats, mask)                                             # pads first, zeroed
        return cond.to(self.device), m.to(self.device)


# ---- Janus-Pro-1B (docs/method.md §17.2): captions -> left-padded prompt token ids -----------------------------
TEMPLATE = "<|User|>: {caption}\n\n<|Assistant|>:"  # deepseek sft format, empty system prompt (conversation.py)
BOI, PAD = "<begin_of_image>", "<｜▁pad▁｜>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class JanusTextEncoder:
    """captions -> (ids int64 (B,T), mask bool (B,T)): BOS + TEMPLATE(caption.strip()).strip() + <begin_of_image>
    (trainer.py:336-354; processing_vlm.py:137-213), left-padded with pad_id. The tokenizer (transformers'
    AutoTokenizer, from a local folder or a hub id) loads on the first call; its BOS, pad and <begin_of_image> ids
    are checked against cfg (janus.JanusGenConfig: bos_id, pad_id, boi_id; any object with those three)."""

    def __init__(self, path_or_name: str, cfg, device="cpu"):
        self.path, self.cfg, self.device = path_or_name, cfg, torch.device(device)
        self.tokenizer = None

    @staticmethod
    def prompt(caption: str) -> str:
        return TEMPLATE.format(caption=caption.strip()).strip() + BOI

    def _load(self):
        import transformers
        try:
            tok = transformers.AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as e:  # offline hub / missing files: chained, not swallowed
            raise cannot_load("JanusTextEncoder (tokenizer)", self.path, e,
                              f"Download {', '.join(TOKENIZER_FILES)} of deepseek-ai/Janus-Pro-1B into a folder (e.g. "
                              f"`hf download deepseek-ai/Janus-Pro-1B {' '.join(TOKENIZER_FILES)} --local-dir "
                              f"Janus-Pro-1B` on a machine with network) and pass that folder (--janus_tokenizer "
                              f"Janus-Pro-1B).") from e
        c = self.cfg
        got = {"BOS": (tok.bos_token_id, c.bos_id), f"pad {PAD}": (tok.get_vocab().get(PAD), c.pad_id),
               BOI: (tok.encode(BOI, add_special_tokens=False), [c.boi_id])}
        bad = [f"{name}: tokenizer {a} vs config {b}" for name, (a, b) in got.items() if a != b]
        if bad:
            raise ValueError(f"JanusTextEncoder: tokenizer {self.path!r} does not match the JanusGenConfig ("
                             + "; ".join(bad) + f"); {BOI} must encode to the single id boi_id")
        probe = "a photo of a red cat"        # words must stay words (the failure below glues them together)
        back = tok.decode(tok.encode(probe, add_special_tokens=False), clean_up_tokenization_spaces=False)
        if back.split() != probe.split():
            raise ValueError(f"JanusTextEncoder: tokenizer {self.path!r} turns {probe!r} into {back!r}: it loaded as "
                             f"another tokenizer type (some transformers 5.x releases read Janus's byte-level BPE as "
                             f"a SentencePiece LlamaTokenizer and drop whitespace); install another transformers "
                             f"version (this one: {transformers.__version__})")
        self.tokenizer = tok

    def __call__(self, captions):
        captions = [captions] if isinstance(captions, str) else list(captions)
        if self.tokenizer is None:
            self._load()
        rows = [self.tokenizer.encode(self.prompt(c)) for c in captions]  # encode prepends BOS (upstream too)
        for c, r in zip(captions, rows):
            if r[0] != self.cfg.bos_id or r[-1] != self.cfg.boi_id:
                raise ValueError(f"caption {c!r} encodes to {r[:3]}...{r[-2:]}: need BOS {self.cfg.bos_id} first and "
                                 f"{BOI} {self.cfg.boi_id} last (does the tokenizer prepend BOS?)")
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.cfg.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, r in enumerate(rows):  # left padding (trainer.py:346-354)
            ids[b, T - len(r):], mask[b, T - len(r):] = torch.tensor(r), True
        return ids.to(self.device), mask.to(self.device)


if __name__ == "__main__":
    enc = WordTextEncoder("a red blue circle square on the left".split(), dim=8, max_len=6)
    cond, mask = enc(["A red circle.", "a blue square on the left"])
    print("cond", tuple(cond.shape), "mask", mask.int().tolist())
    print("clean_caption:", repr(clean_caption("  Visit https://x.com <b>BIG</b> Cat &amp; \u201cnow\u201d ")))
    assert mask[0].tolist() == [False] * 3 + [True] * 3 and torch.count_nonzero(cond[0, :3]) == 0
    assert torch.equal(cond, enc(["a red circle", "a blue square on the left"])[0]), "not case/punctuation-insensitive"
