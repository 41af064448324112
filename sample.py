"""Sample the evaluation benchmarks from a train.py checkpoint, with each backbone's released evaluation sampler.

The paper's tables (docs/method.md §11, §12 of the paper's comparison; Janus: §17.6) score COCO-30K (FID, CLIP),
GenEval and HPSv2 images. This file turns a checkpoint into those image folders; eval_fid.py scores them.

    python sample.py --ckpt runs/llamagen_xl_clip/ckpt_0006000.pt --bench coco --prompts coco_captions.csv \
        --out_dir out/coco                                      # 30,000 images, one per caption (cycled)
    python sample.py --ckpt CKPT --bench geneval --prompts evaluation_metadata.jsonl --out_dir out/geneval  # 4/prompt
    python sample.py --ckpt CKPT --bench hps --prompts hpsv2_benchmark_prompts --out_dir out/hps   # 1/prompt/style
    python eval_fid.py coco --fake_dir out/coco --ref_dir coco2014 --inception inception-2015-12-05.pt

The folders are the ones the official evaluators read (README, "Real backbones"): out/coco (images/{idx:06d}.png and
captions.txt, LlamaGen's evaluations/t2i/evaluation.py --fake_dir), out/geneval ({i:05d}/metadata.jsonl and
samples/{k:04d}.png, GenEval's evaluate_images.py), out/hps ({style}/{idx:05d}.jpg, hpsv2.evaluate). Until a run has
finished, its folder holds SAMPLING_NOT_FINISHED and no metadata, which makes every evaluator here refuse it.

Sampler settings come from backbones.EVAL_SETTINGS (LlamaGen: CFG 6, T 1, top-k 1000; Janus: CFG 5, T 1, top-k 50,
D12), images per prompt from the released samplers (COCO 1, GenEval 4, HPSv2 1), precision from the released sampler
of each benchmark (RELEASED_PRECISION: bf16 GPT, bf16 autocast or bf16 model; --precision fp32 for none).
`--policy` / `--decoder` pick the online or EMA weights of the checkpoint (released combos: LlamaGen CLIP and Janus
online + online, LlamaGen HPS online policy + EMA decoder). Images are converted to uint8 as the backbone's released
sampler does (TO_UINT8). Every run is resumable (existing images are kept; a folder of a run with other prompts,
checkpoint, seed or batch size is refused) and seeded per batch (--seed and the batch's place), so a resumed folder
holds an uninterrupted run's images.
Self-check: tests/test_sample.py samples every benchmark from a 2-step toy and a 2-step tiny-Janus checkpoint.
Symbols: B prompts per sampling batch, N image tokens, S image side.
"""
import argparse
import csv
import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm import tqdm

import backbones
import ckpt
from data import to_uint8, to_uint8_janus
from eval_fid import (HPS_STYLES, MARKER, cleanfid_files, geneval_counted, hps_extras, hps_prompts, hps_prompts_sha1,
                      hps_record_path, refuse_extras, tmp_name, write_text)

BENCHES = ("coco", "geneval", "hps")
# The [-1,1] -> uint8 conversion of each backbone's released evaluation sampler (they differ by half a level):
# Janus clip((x + 1) / 2 * 255) (RankE janus/sample/sample_t2i_ddp_coco.py:212), every other backbone LlamaGen's
# clamp(127.5 x + 128) (autoregressive/sample/sample_t2i_ddp.py:164).
TO_UINT8 = {"janus_pro_1b": to_uint8_janus}


@dataclass(frozen=True)
class Precision:
    """How an evaluation sampler runs: the dtype its policy and its VQ model are cast to, and whether sampling,
    decoding and the uint8 conversion run under bf16 autocast (then the conversion rounds on the bf16 grid)."""
    policy: torch.dtype = torch.float32
    decoder: torch.dtype = torch.float32
    autocast: bool = False
    tf32: bool = False       # TF32 matmuls on a GPU (torch.backends.cuda.matmul.allow_tf32)


FP32 = Precision()
# The released evaluation samplers' precision (--precision released; docs/method.md §11). T5 is bf16 in all of them
# (text_encoders.T5TextEncoder's default, also here).
RELEASED_PRECISION = {
    # RankE autoregressive/sample/sample_t2i_ddp.py, sample_t2i_ddp_geneval.py (--precision bf16): the whole GPT cast
    # to bf16; decoding and conversion in fp32, TF32 matmuls allowed
    ("llamagen_xl", "coco"): Precision(policy=torch.bfloat16, tf32=True),
    ("llamagen_xl", "geneval"): Precision(policy=torch.bfloat16, tf32=True),
    # RankE autoregressive/sample/sample_t2i_ddp_hpsv2.py:125-139: fp32 GPT; generate, decode_code and
    # clamp(127.5 x + 128) all inside torch.autocast(bf16)
    ("llamagen_xl", "hps"): Precision(autocast=True),
    # RankE janus/sample/sample_t2i_ddp_*.py: the bf16 model samples and decodes; converted in fp32
    ("janus_pro_1b", "coco"): Precision(torch.bfloat16, torch.bfloat16),
    ("janus_pro_1b", "geneval"): Precision(torch.bfloat16, torch.bfloat16),
    ("janus_pro_1b", "hps"): Precision(torch.bfloat16, torch.bfloat16),
}


def precision_plan(backbone: str, bench: str, precision: str) -> Precision:
    """--precision released: the released sampler's (RELEASED_PRECISION); fp32: fp32 throughout. The toy has no
    released sampler: fp32 either way."""
    return RELEASED_PRECISION[backbone, bench] if precision == "released" and backbone != "tiny" else FP32


def load_sampler(ckpt_path, *, policy="online", decoder="online", device="cpu", overrides=None):
    """train.py checkpoint -> (cfg, text_encoder, gpt, vq, sample_fn) with the chosen weights loaded strictly (fp32).
    overrides: {config field: value} for paths that differ on this machine (t5_path, janus_tokenizer, toy_cache)."""
    import train
    ck = ckpt.load_ckpt(ckpt_path, flag="--ckpt", need=("config", "gpt", "ema_gpt", "vq", "ema_vq"),
                        what="a train.py checkpoint (runs/<name>/ckpt_*.pt)")
    known = {f for f in train.Config.__dataclass_fields__}
    cfg = train.Config(**{**{k: v for k, v in ck["config"].items() if k in known}, **(overrides or {})})
    if cfg.backbone != "tiny":
        ckpt.offline_if_unreachable()   # no network: T5 / tokenizer hub ids answer from the cache at once
    text_encoder, gpt, vq, sample_fn, _ = train.seam(cfg).build_policy(cfg, device, weights=False)
    gpt.load_state_dict(ck["gpt" if policy == "online" else "ema_gpt"])
    vq.load_state_dict(ck["vq" if decoder == "online" else "ema_vq"])
    return cfg, text_encoder, gpt.to(device).eval(), vq.to(device).eval(), sample_fn


def batch_seed(seed, key):
    """The seed of one batch's generator: (run seed, the batch's place in the run) -> a 63-bit int."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little") >> 1


def make_generate(cfg, text_encoder, gpt, vq, sample_fn, *, seed, device="cpu", settings=None, autocast=False):
    """(captions, key) -> uint8 (B,3,S,S), sampled with the backbone's released evaluation settings. Each call draws
    from its own generator, seeded by batch_seed(seed, key); the writers below pass the batch's place in the run as
    key, so a batch's images do not depend on the batches drawn before it, and a resumed run writes the images an
    uninterrupted one would have (same --batch_size, same machine: tests/test_sample.py checks it). autocast: sample,
    decode and convert under bf16 autocast (Precision.autocast), the conversion then on the decoder's bf16 output.
    # DEVIATION: the released samplers seed once per process (torch.manual_seed(global_seed * world_size + rank),
    # LlamaGen autoregressive/sample/sample_t2i_ddp.py:35-36), so each image depends on every batch before it and an
    # interrupted run cannot be continued with the same images."""
    settings = settings or backbones.EVAL_SETTINGS[cfg.backbone]
    convert = TO_UINT8.get(cfg.backbone, to_uint8)

    @torch.no_grad()
    def generate(captions, key):
        gen = torch.Generator(device).manual_seed(batch_seed(seed, key))
        cond, mask = (t.to(device) for t in text_encoder(list(captions)))
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=autocast):
            tokens = sample_fn(gpt, cond, mask, generator=gen, **settings)             # (B, N)
            x = vq.decode_indices(tokens)                                               # (B,3,S,S)
            return convert(x, x.dtype if autocast else torch.float32)                  # (B,3,S,S) uint8
    return generate


# --------------------------------------------------------------------------------------------------- folders
# Written so that the official evaluators (their reading rules: eval_fid.py, "sample folders") count only finished
# samples of one run: every file under a tmp_name() first, MARKER at the top of the folder until the run has
# finished (then a hidden record of the run), metadata after the images, and files a reader would count that are not
# this run's samples refused, as is a folder of a run with other prompts, checkpoint or seed.
# DEVIATION(RankE@2798acc): the released samplers write in place, in any order, into any folder, so an interrupted or
# re-used folder is scored silently; here those cases fail loudly (docs/method.md §14, "Evaluation folders").
def _clear_tmp(folder):
    """Remove the temporary files an interrupted run left in folder."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))


def write_blocks(generate, jobs, batch_size, desc, key_prefix="", progress=True):
    """jobs: [(caption, path)] of the whole run, in order. Generates the blocks of batch_size consecutive jobs that
    still miss a file, each whole and keyed by its first job's index (so it equals the uninterrupted run's batch), and
    writes the missing files. -> the number of files written."""
    todo = {i for i, (_, path) in enumerate(jobs) if not os.path.isfile(path)}
    starts = [s for s in range(0, len(jobs), batch_size) if todo.intersection(range(s, s + batch_size))]
    for s in tqdm(starts, desc=desc, disable=not progress):
        block = jobs[s:s + batch_size]
        arrays = _check_batch(generate([c for c, _ in block], f"{key_prefix}{s}"), len(block))   # (B, H, W, 3)
        for i, ((_, path), a) in enumerate(zip(block, arrays), start=s):
            if i in todo:
                save_image(a, path)
    return len(todo)


def save_image(array_hwc, path):
    """uint8 (H, W, 3) -> path, atomically: .jpg as JPEG at quality 100 (Follows RankE
    autoregressive/sample/sample_t2i_ddp_hpsv2.py:144 and janus/sample/sample_t2i_ddp_hpsv2.py:273), else PNG."""
    tmp = tmp_name(path)
    if path.endswith(".jpg"):
        Image.fromarray(array_hwc).save(tmp, format="JPEG", quality=100)
    else:
        Image.fromarray(array_hwc).save(tmp, format="PNG")
    os.replace(tmp, path)


def _record_path(out_dir, bench):
    """Where a finished run keeps its identity: a hidden file no evaluator reads. For HPSv2 it lies inside a style
    folder, since hpsv2 takes every entry of out_dir as a style."""
    return hps_record_path(out_dir) if bench == "hps" else os.path.join(out_dir, ".sampled_with.json")


def begin_run(out_dir, identity, finished_files=()):
    """Open out_dir for a new or resumed sampling run. identity: a JSON dict of what must not change on resume
    (bench, prompts digest, counts, checkpoint, seed); an unfinished or finished run there with another identity is
    refused. Writes MARKER (holding identity) at the top of out_dir, then deletes finished_files: the files by which
    the official readers take the folder as complete (they ignore MARKER), left there by a finished run that is
    reopened to repair it; the run writes them again when it finishes."""
    identity = json.loads(json.dumps(identity))                     # compared as it reads back from the file
    marker, record = os.path.join(out_dir, MARKER), _record_path(out_dir, identity["bench"])
    for path, state in ((marker, "an unfinished"), (record, "a finished")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            changed = sorted(k for k in old.keys() | identity.keys() if old.get(k) != identity.get(k))
            if changed:
                raise ValueError(f"{out_dir} holds {state} run with another {', '.join(changed)} ({path}): resume it "
                                 "with the same prompts and flags, or sample into a new --out_dir")
            break                                                   # the marker is the newer of the two
    os.makedirs(out_dir, exist_ok=True)
    write_text(marker, json.dumps(identity, indent=1) + "\n")
    for path in finished_files:
        if os.path.isfile(path):
            os.remove(path)


def finish_run(out_dir, bench):
    """The run has written everything: its identity moves from MARKER to the hidden record."""
    record = _record_path(out_dir, bench)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    os.replace(os.path.join(out_dir, MARKER), record)


def read_captions(csv_path, n=30000):
    """LlamaGen's coco_captions.csv -> n captions, cycled. The file is a header line `Prompt`, then one raw caption per
    line with its commas NOT quoted (30,000 captions, 1,180 with commas). LlamaGen reads it with pandas and a tab
    delimiter (autoregressive/sample/sample_t2i_ddp.py:109-110), so each whole line is one caption; this follows that
    rule with csv's tab-delimited reader, which parses as pandas does (equal on all 30,000 lines): blank lines are
    skipped, a caption that opens with a double quote loses that quote pair, anything else is kept as written."""
    # DEVIATION(RankE@2798acc): the released RankE sampler splits this file at commas (pd.read_csv), which fails, then
    # falls back to stripped lines and keeps the header "Prompt" as caption 0 (janus/sample/sample_t2i_ddp_coco.py:
    # 226-243); LlamaGen's rule reads the file as written.
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or "Prompt" not in header:
            raise ValueError(f"{csv_path}: the first line must be the header `Prompt` (LlamaGen's coco_captions.csv: "
                             f"that line, then one caption per line), got {header}")
        col, caps = header.index("Prompt"), []
        for row in reader:
            if not row:
                continue                                                      # a blank line (pandas skips it too)
            if len(row) != len(header):
                raise ValueError(f"{csv_path}:{reader.line_num}: {len(row)} tab-separated fields, the header has "
                                 f"{len(header)}: fix that line")
            if row[col].splitlines() != [row[col]]:
                raise ValueError(f"{csv_path}:{reader.line_num}: caption {row[col]!r} is empty or holds a line break; "
                                 "captions.txt is read back line by line, so it would shift every later caption "
                                 "against its image: fix that line")
            caps.append(row[col])
    if not caps:
        raise ValueError(f"{csv_path}: no captions after the header")
    return list(itertools.islice(itertools.cycle(caps), n))


def _check_batch(images, n):
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[:2] != (n, 3):
        raise ValueError(f"generate must return a uint8 tensor ({n}, 3, H, W), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
                         " (use data.to_uint8 on [-1,1] decoder output)")
    return images.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)


def sample_to_folder(generate, captions, out_dir, *, batch_size=32, progress=True, run=None):
    """One image per caption: out_dir/images/{idx:06d}.png, then out_dir/captions.txt (one caption per line), the
    folder LlamaGen's evaluations/t2i/evaluation.py reads as --fake_dir. Resumable: images are drawn in blocks of
    batch_size consecutive indices; a block with a missing PNG is drawn again whole with its own key and only the
    missing files are written, so the folder ends as an uninterrupted run's would (write_blocks). Refused: a caption
    that is empty or holds a line break, a finished folder of other captions, an unfinished run of other captions,
    batch size or `run` settings, and images under images/ that are not these samples (clean-fid would score them).
    generate: callable (list[str], key) -> uint8 (B, 3, H, W), sampler settings fixed inside (docs/method.md §11:
    LlamaGen CFG 6.0, T 1, top-k 1000, top-p 1.0), its randomness a function of key (make_generate). run: JSON dict
    that must not change on resume (checkpoint, seed, ...).
    Returns the number of images written by this call."""
    bad = [i for i, c in enumerate(captions) if c.splitlines() != [c]]
    if not captions or bad:
        raise ValueError("captions must be non-empty one-line strings (captions.txt is read back line by line): "
                         + (f"caption {bad[0]} is {captions[bad[0]]!r}" if bad else "got none"))
    img_dir, cap_path = os.path.join(out_dir, "images"), os.path.join(out_dir, "captions.txt")
    text = "".join(c + "\n" for c in captions)
    if os.path.isfile(cap_path) and not os.path.isfile(os.path.join(out_dir, MARKER)):
        with open(cap_path, encoding="utf-8") as f:
            if f.read() != text:
                raise ValueError(f"{out_dir} holds a finished run of other captions ({cap_path}): sample into a new "
                                 "--out_dir")
    paths = [os.path.join(img_dir, f"{i:06d}.png") for i in range(len(captions))]
    refuse_extras(set(cleanfid_files(img_dir)) - set(paths), img_dir, "clean-fid (every image under images/)")
    begin_run(out_dir, {"bench": "coco", "n": len(captions), "batch_size": batch_size, **(run or {}),
                        "captions_sha1": hashlib.sha1(text.encode()).hexdigest()}, finished_files=[cap_path])
    os.makedirs(img_dir, exist_ok=True)
    _clear_tmp(img_dir)
    made = write_blocks(generate, list(zip(captions, paths)), batch_size, "sampling", progress=progress)
    # DEVIATION(RankE@2798acc): captions.txt comes after the images, as in LlamaGen (sample_t2i_ddp.py:186-191);
    # RankE writes it first (janus/sample/sample_t2i_ddp_coco.py:255-262), so a partial folder looked finished.
    write_text(cap_path, text)
    finish_run(out_dir, "coco")
    return made


def sample_hps_benchmark(generate, prompts_dir, out_dir, *, batch_size=32, run=None):
    """1 image per HPDv2 prompt per style: out_dir/{style}/{idx:05d}.jpg at JPEG quality 100, the only name hpsv2
    reads (hpsv2/evaluation.py:33) and the released samplers' format. Resumable; refused as in sample_to_folder,
    and out_dir must hold nothing but the 4 style folders (hpsv2 takes every entry of it as a style)."""
    prompts = {style: hps_prompts(prompts_dir, style) for style in HPS_STYLES}
    # the marker, and its temporary file if a kill came while it was written, are this run's own
    refuse_extras(hps_extras(out_dir) - {MARKER, os.path.basename(tmp_name(MARKER))}, out_dir,
                  "hpsv2 (every entry is a style)")
    begin_run(out_dir, {"bench": "hps", "batch_size": batch_size, **(run or {}),
                        "prompts_sha1": hps_prompts_sha1(prompts)})
    made = 0
    for style in HPS_STYLES:
        d = os.path.join(out_dir, style)
        os.makedirs(d, exist_ok=True)
        _clear_tmp(d)
        jobs = [(p, os.path.join(d, f"{i:05d}.jpg")) for i, p in enumerate(prompts[style])]
        made += write_blocks(generate, jobs, batch_size, f"HPS {style}", key_prefix=f"{style}/")
    finish_run(out_dir, "hps")
    return made


def sample_geneval(generate, metadata_jsonl, out_dir, *, n_per_prompt=4, batch_size=32, run=None):
    """GenEval sampling layout: out_dir/{i:05d}/samples/{k:04d}.png, n_per_prompt images per prompt (553 prompts x 4,
    docs/method.md §11), and out_dir/{i:05d}/metadata.jsonl (the prompt's JSON object) once all images exist. Every
    prompt folder is made first, so an unfinished run leaves folders without metadata.jsonl, on which GenEval's
    evaluate_images.py stops (evaluation/evaluate_images.py:267) instead of scoring fewer prompts. Resumable; refused
    as in sample_to_folder. Scoring runs GenEval's own detector scripts (evaluate_images.py, summary_scores.py)."""
    with open(metadata_jsonl, encoding="utf-8") as f:
        metas = [json.loads(line) for line in f if line.strip()]
    if not metas:
        raise ValueError(f"{metadata_jsonl}: no prompts (GenEval's evaluation_metadata.jsonl: one JSON object a line)")
    want = {f"{i:05d}": {f"{k:04d}.png" for k in range(n_per_prompt)} for i in range(len(metas))}
    found = geneval_counted(out_dir)
    extras = [os.path.join(out_dir, sub) for sub in found if sub not in want]
    extras += [os.path.join(out_dir, sub, "samples", name) for sub in found if sub in want
               for name in found[sub] if name not in want[sub]]
    refuse_extras(extras, out_dir, "GenEval's evaluate_images.py")
    dirs = [os.path.join(out_dir, sub) for sub in sorted(want)]
    for i, (d, meta) in enumerate(zip(dirs, metas)):
        path = os.path.join(d, "metadata.jsonl")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if json.load(f) != meta:
                    raise ValueError(f"{path} holds another prompt than prompt {i} of {metadata_jsonl}: sample into "
                                     "a new --out_dir")
    begin_run(out_dir, {"bench": "geneval", "n_per_prompt": n_per_prompt, "batch_size": batch_size, **(run or {}),
                        "metadata_sha1": hashlib.sha1(json.dumps(metas).encode()).hexdigest()},
              finished_files=[os.path.join(d, "metadata.jsonl") for d in dirs])
    for d in dirs:
        os.makedirs(os.path.join(d, "samples"), exist_ok=True)
        _clear_tmp(d)
        _clear_tmp(os.path.join(d, "samples"))
    jobs = [(meta["prompt"], os.path.join(d, "samples", f"{k:04d}.png")) for d, meta in zip(dirs, metas)
            for k in range(n_per_prompt)]
    made = write_blocks(generate, jobs, batch_size, "GenEval")
    # DEVIATION(RankE@2798acc): metadata.jsonl after all images (RankE writes it with a prompt's first image,
    # janus/sample/sample_t2i_ddp_geneval.py:263-269), so GenEval cannot score an unfinished folder.
    for d, meta in zip(dirs, metas):
        write_text(os.path.join(d, "metadata.jsonl"), json.dumps(meta) + "\n")
    finish_run(out_dir, "geneval")
    return made


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="train.py checkpoint (runs/<name>/ckpt_*.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--prompts", required=True,
                   help="coco: LlamaGen's coco_captions.csv (a header line `Prompt`, then one caption per line); "
                        "geneval: evaluation_metadata.jsonl; hps: folder with anime.json, concept-art.json, "
                        "paintings.json, photo.json")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--n", type=int, default=30000, help="coco: number of images (captions cycled)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--policy", default="online", choices=("online", "ema"))
    p.add_argument("--decoder", default="online", choices=("online", "ema"))
    p.add_argument("--seed", type=int, default=None, help="default: the released one, 42 (COCO, HPS), 0 (GenEval)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="released", choices=("released", "fp32"),
                   help="released: the released sampler's (LlamaGen COCO / GenEval: bf16 GPT; HPSv2: bf16 autocast; "
                        "Janus: bf16 model; docs/method.md §11); fp32: the trained weights' own distribution, no "
                        "bf16 rounding of logits or pixels. The toy samples in fp32 either way")
    for f in ("t5_path", "janus_tokenizer", "toy_cache"):
        p.add_argument(f"--{f}", default=None, help=f"override the checkpoint's {f} (files moved to another place)")
    a = p.parse_args(argv)
    a.seed = (0 if a.bench == "geneval" else 42) if a.seed is None else a.seed
    kind = {"coco": "file", "geneval": "file", "hps": "dir"}[a.bench]
    bad = [m for m in (ckpt.check_path("--ckpt", a.ckpt), ckpt.check_path("--prompts", a.prompts, kind)) if m]
    if a.n < 1 or a.batch_size < 1:
        bad.append(f"--n {a.n} / --batch_size {a.batch_size}: both must be >= 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # every process would draw every image into the same files
        bad.append(f"WORLD_SIZE {os.environ['WORLD_SIZE']}: sample.py is one process (no sharding); run it with "
                   f"python, not torchrun, or one run per --out_dir")
    if bad:
        raise SystemExit("\n".join(bad))
    overrides = {f: getattr(a, f) for f in ("t5_path", "janus_tokenizer", "toy_cache") if getattr(a, f)}
    try:
        captions = read_captions(a.prompts, a.n) if a.bench == "coco" else None
        cfg, te, gpt, vq, fn = load_sampler(a.ckpt, policy=a.policy, decoder=a.decoder, device=a.device,
                                            overrides=overrides)
    except (ckpt.CkptError, ValueError) as e:                     # ValueError includes UnicodeDecodeError
        raise SystemExit(str(e))
    plan = precision_plan(cfg.backbone, a.bench, a.precision)
    gpt, vq = gpt.to(plan.policy), vq.to(plan.decoder)
    if plan.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    generate = make_generate(cfg, te, gpt, vq, fn, seed=a.seed, device=a.device, autocast=plan.autocast)
    # what must not change when an unfinished folder is resumed (the prompts are checked by the writers)
    run = {"ckpt": os.path.abspath(a.ckpt), "policy": a.policy, "decoder": a.decoder, "seed": a.seed,
           "precision": a.precision}
    try:
        if a.bench == "coco":
            made = sample_to_folder(generate, captions, a.out_dir, batch_size=a.batch_size, run=run)
        elif a.bench == "geneval":
            made = sample_geneval(generate, a.prompts, a.out_dir, n_per_prompt=4, batch_size=a.batch_size, run=run)
        else:
            made = sample_hps_benchmark(generate, a.prompts, a.out_dir, batch_size=a.batch_size, run=run)
    except (FileExistsError, FileNotFoundError, ValueError) as e:   # a folder or prompt file refused, named inside
        raise SystemExit(str(e))
    print(f"[sample] {a.bench}: {made} new images in {a.out_dir} ({cfg.backbone}, "
          f"{backbones.EVAL_SETTINGS[cfg.backbone]}, policy {a.policy}, decoder {a.decoder}, seed {a.seed}, {plan})")
    return made


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
