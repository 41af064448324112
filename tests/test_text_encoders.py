"""text_encoders.py: left alignment (D11), the toy word encoder, the caption cleaner (LlamaGen's, exact), FLAN-T5 on
a tiny local model, and the offline hub failing fast. CPU, offline.

Run: pytest -q tests/test_text_encoders.py
"""
import ast
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import text_encoders
from text_encoders import T5TextEncoder, WordTextEncoder, clean_caption, left_align

WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right", "big"]


def test_left_align_rotates_zeroes_and_flips():
    feats = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2) + 1
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out, m = left_align(feats, mask)
    assert m.tolist() == [[False, False, True, True], [True, True, True, True]]
    assert torch.equal(out[0, 2:], feats[0, :2]) and torch.count_nonzero(out[0, :2]) == 0
    assert torch.equal(out[1], feats[1])
    with pytest.raises(ValueError, match="right-padded"):
        left_align(feats, mask.flip(1))


def test_word_text_encoder():
    enc = WordTextEncoder(WORDS, 32, 8)
    cond, mask = enc(["A red circle.", "the big, blue square on the left"])
    assert cond.shape == (2, 8, 32) and cond.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask[0].tolist() == [False] * 5 + [True] * 3 and mask[1].tolist() == [False] + [True] * 7
    assert torch.count_nonzero(cond[0, :5]) == 0
    i = enc.index
    torch.testing.assert_close(cond[0, 5], enc.table[i["a"]] + enc.pos[0])   # word vector + position in caption
    torch.testing.assert_close(cond[0, 7], enc.table[i["circle"]] + enc.pos[2])
    again, _ = WordTextEncoder(WORDS, 32, 8)(["a red circle", "the big blue square on the left"])
    assert torch.equal(again, cond)                                          # deterministic, case/punct-insensitive
    other, _ = WordTextEncoder(WORDS, 32, 8, seed=1)(["a red circle", "the big blue square on the left"])
    assert not torch.allclose(other, cond)
    with pytest.raises(ValueError, match="'purple'"):
        enc(["a purple circle"])
    with pytest.raises(ValueError, match="max_len"):
        enc(["a red circle on the left a big blue square"])
    with pytest.raises(ValueError, match="max_len"):
        enc([" .. "])                                                    # no word left
    single, _ = enc("a red circle")                                      # one caption as a str, like T5's tokenizer
    assert torch.equal(single, cond[:1])
    _, m = enc(["circle", "a big red circle on the left a"])             # 1 and max_len = 8 words: both fit
    assert m.sum(1).tolist() == [1, 8]
    for vocab, dim in ((WORDS + ["red"], 32), (WORDS + ["two words"], 32), (WORDS, 31)):
        with pytest.raises(ValueError, match="distinct single words"):
            WordTextEncoder(vocab, dim, 8)


def test_word_text_encoder_vectors_by_hand():
    """Word vectors: N(0, 1/D) from the seed; positions: the sinusoid sin / cos(p / 10000^(2i/D)) interleaved, each
    row scaled to unit norm (both the toy GPT's shipped weights were trained on, so they must not drift)."""
    D, L = 8, 4
    enc = WordTextEncoder(WORDS, D, L, seed=3)
    want = torch.randn(len(WORDS), D, generator=torch.Generator().manual_seed(3)) / D ** 0.5
    torch.testing.assert_close(enc.table, want)
    for p in range(L):
        for i in range(D // 2):
            angle = p / 10000 ** (2 * i / D)
            assert abs(enc.pos[p, 2 * i].item() - math.sin(angle) / math.sqrt(D / 2)) < 1e-6
            assert abs(enc.pos[p, 2 * i + 1].item() - math.cos(angle) / math.sqrt(D / 2)) < 1e-6
    assert torch.allclose(enc.pos.norm(dim=1), torch.ones(L))


# (raw caption, what LlamaGen's T5Embedder.text_preprocessing returns): outputs of upstream's own code
# (language/t5.py:81-201, both passes, ftfy 6.3.1, beautifulsoup4 4.15.0), written down here as literals.
LLAMAGEN_CLEANED = [
    ("  Visit https://x.com/a?b=1 <b>BIG</b> Cat &amp; @bob \u201cnow\u201d ", 'visit ?b=1 big cat "now"'),
    ("A wooden shelf..", "a wooden shelf"),                             # ".." -> space
    ("Smith & Sons bakery", "smith sons bakery"),                       # & @ # ( ) [ ] ... -> space
    ("an elephant/", "an elephant"),
    ("at 3 p.m. on a street", "at 3 p. m. on a street"),                # space after , . / inside words
    ("a dog,a cat.and a/b", "a dog, a cat. and a b"),
    ("1,000 people", "1,000 people"),                                   # not after a digit
    ("a <person> riding a horse", "a person riding a horse"),           # LlamaGen's <person> rule
    ("%3Cperson%3E on a+bench", "person on a bench"),                   # URL-unquoted first
    ("#1 fan\u00ae (blue) [red] {x} a|b \\ c * d ~ e", "fan blue red x a b c d e"),
    ("this-is-my-cute-cat", "this is my cute cat"),                     # > 3 '-' / '_': all become spaces
    ("a well-known dog", "a well-known dog"),
    ("`quoted\u00b4 \u00abword\u00bb \u2018it\u2019s\u2019", "quoted\" \"word\" 'it's"),   # ` and \u00b4 -> "
    ("A\u2014B  c", "a-b c"),
    ("Caf\u00c3\u00a9 &amp;amp; &quot;x&quot;", 'caf\u00e3 ; "x"'),  # lowercased before ftfy sees the mojibake
    ("\u4e2d\u6587 cat", "cat"),                                       # CJK removed
    ("emoji \U0001F600 cat", "emoji \U0001F600 cat"),
    ("server 192.168.0.1 photo.jpg of a cat", "server of a cat"),      # IP addresses, file names
    ("free shipping worldwide download free", "worldwide"),
    ("click for details page 12 png images", ""),
    ("jc6640 jc6640vc 6640vc231 j2d1a2a", ""),
    ("a 1920x1080 wallpaper", "a wallpaper"),
    ("#12345 tag and 1234567 id", "tag and id"),
    ("key : value", "key: value"),
    ("'a cat'", "a cat"),
    ('"""AUSVERKAUFT"""', "ausverkauft"),
    (".hidden", ""),
    ("line\\nbreak", "line break"),                                    # a literal backslash-n
    ("a . b", "a b"),
    # the second pass matters for these (one pass gives '<person>', '<b>bold< b>', 'a . b', 'Abc'):
    ("&lt;person&gt;", "person"),
    ("&lt;b&gt;bold&lt;/b&gt;", "bold< b>"),
    ("a .b", "a b"),
    ("&#x41;BC", "abc"),
    # the third pass would change this one (to "person"): exactly two passes
    ("%2526lt%253Bperson%2526gt%253B", "<person>"),
    # one rule each that the cases above leave untested (outputs of the same upstream code at ce98ec4)
    ("www:abc cat", "bc cat"),                                          # the "www:" URL rule
    ("a cat &quot;x&quot", 'a cat "x'),                                 # &quot without its ';'
    ("a clock at 1:23 @bob", "a clock at"),                             # trailing "d:dd " once @bob is gone
    ("don\u00e2\u0080\u0099t stop", "don't stop"),                        # ftfy repairs the mojibake
    ("size 10\u00d720 rug", "size rug"),                                # 10x20 with a multiplication sign
    (",a cat,", "a cat"),                                               # leading / trailing punctuation
    (";a cat:", "a cat"),
    ("well-to-do-ish", "well-to-do-ish"),                               # exactly 3 '-': kept
]


@pytest.mark.parametrize("raw,cleaned", LLAMAGEN_CLEANED)
def test_clean_caption_equals_llamagen(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_clean_caption_imports_lazily():
    """`import text_encoders` stays light: ftfy and bs4 are imported inside clean_caption, not at module level."""
    tree = ast.parse(open(text_encoders.__file__, encoding="utf-8").read())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not {"ftfy", "bs4"} & top


def test_t5_encoder_with_a_tiny_local_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<pad>", "</s>", "<unk>", "a", "big", "red", "cat", "&", "dog"]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32,
                                                           num_layers=1, num_heads=2)).eval()
    t5.save_pretrained(tmp_path)
    enc = T5TextEncoder(str(tmp_path), max_len=6, dtype=torch.float32)
    cond, mask = enc(["A <b>BIG</b> cat", "dog"])                                  # cleaned: "a big cat", "dog"
    assert cond.shape == (2, 6, 16) and cond.dtype == torch.float32
    assert mask.tolist() == [[False, False, True, True, True, True], [False] * 4 + [True, True]]   # words + </s>
    assert torch.count_nonzero(cond[~mask]) == 0
    ids = torch.tensor([[3, 4, 6, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
    ref = t5(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state.detach()   # right-padded
    torch.testing.assert_close(cond[0, 2:], ref[0, :4])
    torch.testing.assert_close(cond[1, 4:], ref[1, :2])


@pytest.mark.slow
def test_t5_offline_fails_fast_and_informatively():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent_hf_home"}
    code = ("import time, text_encoders; enc = text_encoders.T5TextEncoder('google/flan-t5-xl'); t = time.time()\n"
            "try:\n    enc(['a cat'])\n"
            "except FileNotFoundError as e:\n    print('ERR', round(time.time() - t, 1), e)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "ERR" in r.stdout, r.stdout + r.stderr
    assert "--local-dir" in r.stdout and "--t5_path" in r.stdout
    assert float(r.stdout.split()[1]) < 10 and time.time() - t0 < 60
