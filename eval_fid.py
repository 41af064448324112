"""Evaluation of RankE (arXiv 2605.21195; docs/method.md §11): COCO-30K FID + CLIP score, HPSv2.1 benchmark, and
what the official evaluators read from sample.py's folders. The toy world's metrics (toy FID, toy CLIP, attribute
check, LCS) are in toy/eval.py, which builds on the Frechet distance here; this file imports no toy file.

- frechet_distance / feature_stats: FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64, scipy sqrtm.
- InceptionFeatures: clean-fid's "clean" mode, reimplemented without the clean-fid package: the StyleGAN2-ADA
  TorchScript port of the TF FID Inception (inception-2015-12-05.pt, the file clean-fid itself downloads), inputs
  resized per channel with PIL float bicubic to 299 (no uint8 rounding) and clipped to [0, 255], (x - 128) / 128,
  pool3 2048-d.
  Adapted from: clean-fid cleanfid/resize.py (make_resizer "PIL", quantize_after=False), features.py InceptionV3W.
- COCO-30K: a sample.py folder, images/{idx:06d}.png paired with the lines of captions.txt as LlamaGen's
  evaluations/t2i/evaluation.py pairs them; centre-crop-long-edge + Lanczos to eval_res for both image sets;
  reference = every image of ref_dir/val2014 (40,504; ref_dir as in LlamaGen's tool), statistics cached in a .npz
  keyed by the folder's file list + settings (the released script recomputes them on every call).
- CLIP score: OpenAI CLIP ViT-B/32, caption prefixed "A photo depicts ", bicubic resize to 224, mean cosine x 100.
- HPSv2: HPDv2 benchmark, 4 styles, {style}/{idx:05d}.jpg at JPEG quality 100 (the name hpsv2 reads, the released
  samplers' format), HPS v2.1 (rewards.make_reward("hpsv2")), raw scores (not x100), mean per style.
- Folders: the reading rules of clean-fid, LlamaGen, GenEval and hpsv2 ("sample folders" below); a folder that is
  unfinished (SAMPLING_NOT_FINISHED), incomplete or holds files of another run is refused; scores go beside a
  folder, never into it. sample.py writes the folders.

Run the self-check (closed-form Gaussians):  python eval_fid.py
COCO:   python eval_fid.py coco --fake_dir out/coco --ref_dir coco2014 --inception inception-2015-12-05.pt
        (scores -> out/coco_scores.json; --ref_dir holds val2014/, as for LlamaGen's evaluation.py)
HPSv2:  python eval_fid.py hps --image_dir out/hps --prompts_dir hpsv2_benchmark_prompts [--hps HPS_v2.1_compressed.pt]
Toy:    python -m toy.eval --ckpt CKPT [--decoder online|ema|base]
Tests:  pytest tests/test_eval_fid.py
Depends on: numpy, scipy, PIL, tqdm, torch; sibling rewards.py (the CLIP-score and HPS v2.1 models); the command
line also ckpt.py (its hub probe).
Symbols: M images, B batch, F feature width (2048 Inception), S eval resolution.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import warnings

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from tqdm import tqdm

import rewards

# clean-fid's extensions, case-sensitive as its glob is (cleanfid/utils.py:61-62; .npy arrays count as images there)
IMAGE_EXTS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp", "npy", "JPEG", "JPG", "PNG")
MARKER = "SAMPLING_NOT_FINISHED"  # at the top of a folder while its sampling run is unfinished
CLIP_SCORE_PREFIX = "A photo depicts "  # docs/method.md §11 (GigaGAN protocol, arXiv 2104.08718)
HPS_STYLES = ("anime", "concept-art", "paintings", "photo")


# --------------------------------------------------------------------------------------------------- Frechet distance
def feature_stats(features):
    """features (M, F) -> (mu (F,), sigma (F, F)) in float64; sigma is the unbiased covariance (np.cov)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (M >= 2, F) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, s1, mu2, s2, eps=1e-6):
    """d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), float64 (Heusel et al. 2017).
    If S1 S2 is singular, eps*I is added to both covariances (the standard fallback, with a warning); an
    imaginary part of the square root beyond numerical noise is an error."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: S1 S2 is singular; adding {eps} * I to both covariances")
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def kernel_inception_distance(feats_a, feats_b):
    """KID (Binkowski et al. 2018, arXiv 1801.01401): the unbiased estimate of MMD^2 between two feature sets with
    the cubic polynomial kernel k(x, y) = (x.y / F + 1)^3, and its jackknife standard error.
        MMD^2_u = sum_{i!=j} k(a_i, a_j) / (n(n-1)) + sum_{i!=j} k(b_i, b_j) / (m(m-1)) - 2 sum_{i,j} k(a_i, b_j) / (nm)
    Unlike FID it has no bias at small n (its expectation is the population MMD^2, 0 for equal distributions), so it
    can be negative. The released tools (torch-fidelity, clean-fid) average it over random subsets of 1,000; here it
    is taken on all pairs, and the standard error is the two-sample delete-one jackknife (Efron & Stein), exact in
    O(n^2) from the kernel matrices' row sums. It treats the two sets as independent samples; where they are paired
    (fake image i drawn from real image i's caption, as in toy/eval.py) the pair is the sampling unit, and this
    standard error is conservative (larger than the paired one; docs/method.md §11).
    feats_a (n, F), feats_b (m, F), n, m >= 3 -> (kid, standard error), floats."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 3:
        raise ValueError(f"kernel_inception_distance needs (n >= 3, F) and (m >= 3, F) features, got {a.shape}, "
                         f"{b.shape}")
    n, m, F = a.shape[0], b.shape[0], a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / F + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))     # (n,n), (m,m), (n,m)
    r_aa = k_aa.sum(1) - np.diagonal(k_aa)                  # (n,) row sums without the diagonal
    r_bb = k_bb.sum(1) - np.diagonal(k_bb)                  # (m,)
    s_aa, s_bb, s_ab = r_aa.sum(), r_bb.sum(), k_ab.sum()

    def mmd(saa, na, sbb, nb, sab):
        return saa / (na * (na - 1)) + sbb / (nb * (nb - 1)) - 2 * sab / (na * nb)

    kid = mmd(s_aa, n, s_bb, m, s_ab)
    # leave a_i out: its row and column leave the a-a sum (2 r_aa[i]), its row leaves the a-b sum; likewise for b_j
    loo_a = mmd(s_aa - 2 * r_aa, n - 1, s_bb, m, s_ab - k_ab.sum(1))                        # (n,)
    loo_b = mmd(s_aa, n, s_bb - 2 * r_bb, m - 1, s_ab - k_ab.sum(0))                        # (m,)
    var = (n - 1) / n * ((loo_a - loo_a.mean()) ** 2).sum() + (m - 1) / m * ((loo_b - loo_b.mean()) ** 2).sum()
    return float(kid), float(np.sqrt(var))


# --------------------------------------------------------------------------------------------------- images
def center_crop_resize(img, res):
    """PIL image -> centre crop of the long edge to a square, PIL Lanczos resize to res x res (GigaGAN protocol)."""
    img = img.convert("RGB")
    s = min(img.size)
    left, top = int(round((img.width - s) / 2.0)), int(round((img.height - s) / 2.0))  # torchvision center_crop
    img = img.crop((left, top, left + s, top + s))
    return img if img.size == (res, res) else img.resize((res, res), Image.LANCZOS)


def cleanfid_files(folder):
    """The files clean-fid scores in folder: every IMAGE_EXTS file under it, recursive, sorted by path (Follows
    cleanfid/fid.py:137-138). Hidden names (a leading dot) are not matched, as with glob."""
    return sorted(p for e in IMAGE_EXTS for p in glob.glob(os.path.join(folder, "**", f"*.{e}"), recursive=True))


def list_images(folder):
    """Every image file under folder (recursive), sorted, as clean-fid lists a folder; an empty folder is an error."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    files = cleanfid_files(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) found under {folder!r}")
    if any(p.endswith(".npy") for p in files):
        raise ValueError(f"{folder!r} holds .npy files, which clean-fid would score as images and this reader cannot "
                         "open: move them out of the folder")
    return files


class _Folder(torch.utils.data.Dataset):
    """path -> crop + Lanczos to res -> uint8 (3, res, res), or the extractor's own `prepare` of that array."""

    def __init__(self, paths, res, prepare=None):
        self.paths, self.res, self.prepare = list(paths), res, prepare

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        a = np.asarray(center_crop_resize(Image.open(self.paths[i]), self.res))  # (S, S, 3) uint8
        return self.prepare(a) if self.prepare is not None else torch.from_numpy(a.copy()).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------------- Inception
class InceptionFeatures:
    """FID Inception features in clean-fid's "clean" mode. weights_path: local inception-2015-12-05.pt."""
    URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
    # the id is part of the reference-statistics cache key: "-clip" keeps statistics of the unclipped resize (before
    # prepare() clipped like clean-fid) from being reused
    extractor_id = "inception-2015-12-05/clean-clip"

    def __init__(self, weights_path, device="cpu"):
        if weights_path is None or not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"FID Inception weights not found at {weights_path!r}. Download {self.URL} (the TorchScript file "
                "clean-fid uses, 91 MB) and pass its path (eval_fid.py --inception PATH).")
        self.device = torch.device(device)
        self.net = torch.jit.load(weights_path, map_location=self.device).eval()
        if not hasattr(self.net, "layers"):
            raise RuntimeError(f"{weights_path} is not the StyleGAN2-ADA FID Inception (no .layers submodule)")

    @staticmethod
    def prepare(u8_hwc):
        """uint8 (H, W, 3) -> float32 (3, 299, 299): PIL bicubic per channel on floats (no rounding), then clipped to
        [0, 255] (bicubic overshoots at edges). Follows cleanfid/resize.py:49-57 (make_resizer "PIL", no quantize)."""
        chans = [np.asarray(Image.fromarray(u8_hwc[:, :, c].astype(np.float32))
                            .resize((299, 299), Image.BICUBIC)).clip(0, 255) for c in range(3)]
        return torch.from_numpy(np.stack(chans, 0).astype(np.float32))                # (3, 299, 299)

    @torch.no_grad()
    def __call__(self, images):
        """uint8 (B, 3, H, W) (resized here) or float (B, 3, 299, 299) from prepare() -> (B, 2048) float32."""
        if images.dtype == torch.uint8:
            images = torch.stack([self.prepare(x.permute(1, 2, 0).cpu().numpy()) for x in images])
        if images.shape[1:] != (3, 299, 299):
            raise ValueError(f"InceptionFeatures expects uint8 images or prepared (B,3,299,299), got {images.shape}")
        x = (images.to(self.device, torch.float32) - 128.0) / 128.0
        return self.net.layers(x).reshape(images.shape[0], 2048).float().cpu()


@torch.no_grad()
def folder_features(paths, feature_fn, eval_res, *, batch_size=50, num_workers=4, desc="features"):
    """Image files -> (M, F) float64 features (crop + Lanczos to eval_res first, as for both FID sets)."""
    data = _Folder(paths, eval_res, getattr(feature_fn, "prepare", None))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    feats = [np.asarray(feature_fn(b), np.float64) for b in tqdm(loader, desc=desc)]
    return np.concatenate(feats)


def reference_stats(ref_dir, feature_fn, *, eval_res, cache_dir, extractor_id=None, batch_size=50, num_workers=4):
    """(mu, sigma) of a reference folder, cached in cache_dir as .npz keyed by (folder, its file names + sizes,
    eval_res, extractor id): a second call loads, any change of files or settings recomputes."""
    extractor_id = extractor_id or getattr(feature_fn, "extractor_id", None)
    if not extractor_id:
        raise ValueError("reference_stats: pass extractor_id (a string naming the feature extractor) so cached "
                         "statistics of different extractors are never mixed")
    paths = list_images(ref_dir)
    root = os.path.abspath(ref_dir)
    key = json.dumps({"ref_dir": root, "eval_res": eval_res, "extractor": extractor_id, "mode": "crop+lanczos",
                      "files": [(os.path.relpath(p, root), os.path.getsize(p)) for p in paths]})
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"ref_{os.path.basename(root)}_{eval_res}_{digest}.npz")
    if os.path.isfile(path):
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    mu, sigma = feature_stats(folder_features(paths, feature_fn, eval_res, batch_size=batch_size,
                                              num_workers=num_workers, desc=f"reference {os.path.basename(root)}"))
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=len(paths), key=key)
    os.replace(path + ".tmp", path)
    return mu, sigma


# --------------------------------------------------------------------------------------------------- sample folders
# What the official evaluators read. They count files by name, and none checks that a folder is complete:
#   clean-fid: every image under a folder, recursive (cleanfid/fid.py:137-138);
#   LlamaGen:  images/*.png natural-sorted, zipped with the lines of captions.txt (evaluations/t2i/evaluation.py:85-89);
#   GenEval:   digit-named sub-folders, each with metadata.jsonl and samples/ names that re.match(r"\d+\.png")
#              (evaluation/evaluate_images.py:263-273; unanchored, so `0000.png.tmp` counts);
#   hpsv2:     every entry of the folder is a style; image idx is {style}/{idx:05d}.jpg, a missing one is skipped
#              with a print (hpsv2/evaluation.py:33-38, 118).
# sample.py writes under tmp_name() names none of them matches, keeps MARKER at the top of a folder until its run has
# finished (hpsv2 then fails on MARKER.json), writes metadata last and refuses files of other runs; the scorers here
# refuse a folder that is unfinished, incomplete or holds such files.
def tmp_name(path):
    """Where path is written before its rename: a leading dot and a .tmp ending, which no reader's pattern matches."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp")


def write_text(path, text):
    """text -> path (utf-8), atomically."""
    with open(tmp_name(path), "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp_name(path), path)


def check_finished(folder):
    """A folder whose sampling run has not finished is refused (MARKER present)."""
    if os.path.exists(os.path.join(folder, MARKER)):
        raise ValueError(f"{folder}: sampling is unfinished ({MARKER} is there): rerun sample.py with the same flags "
                         "to complete it before scoring")


def refuse_extras(extras, folder, reader):
    """Entries a reader would count that are not this run's samples (e.g. leftovers of a larger run) -> error."""
    if extras:
        raise FileExistsError(f"{folder}: {len(extras)} entries that {reader} would count are not samples of this "
                              f"run (first: {sorted(extras)[0]}), e.g. leftovers of a larger earlier run: delete them "
                              "or sample into a new --out_dir")


# --------------------------------------------------------------------------------------------------- COCO-30K
def read_coco_folder(fake_dir, n=None):
    """A finished sample_to_folder folder -> (image paths, captions), paired as LlamaGen's evaluation pairs them
    (images/*.png in natural order, zipped with the lines of captions.txt: evaluations/t2i/evaluation.py:85-89).
    Refused: an unfinished run, no captions.txt, a missing sample, an image clean-fid would also score, n given and
    not the number of captions."""
    check_finished(fake_dir)
    cap_path = os.path.join(fake_dir, "captions.txt")
    if not os.path.isfile(cap_path):
        raise FileNotFoundError(f"{cap_path} not found: {fake_dir} is not a finished `sample.py --bench coco` folder "
                                "(captions.txt is written after the images)")
    with open(cap_path, encoding="utf-8") as f:
        captions = f.read().splitlines()                                            # as evaluation.py:88 reads it
    if n is not None and n != len(captions):
        raise ValueError(f"{fake_dir} holds {len(captions)} samples (captions.txt), but --n {n} was asked for")
    img_dir = os.path.join(fake_dir, "images")
    paths = [os.path.join(img_dir, f"{i:06d}.png") for i in range(len(captions))]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} samples missing (first: {missing[0]}): rerun "
                                "sample.py with the same flags")
    refuse_extras(set(cleanfid_files(img_dir)) - set(paths), img_dir, "clean-fid (every image under images/)")
    return paths, captions


def coco_reference_dir(ref_dir):
    """--ref_dir as LlamaGen's evaluations/t2i/evaluation.py:228-232 means it: the COCO-2014 folder that holds
    val2014/; the FID reference is every image under ref_dir/val2014."""
    images = os.path.join(ref_dir, "val2014")
    if os.path.isdir(images):
        return images
    parent = os.path.dirname(os.path.abspath(ref_dir))
    hint = (f"; {ref_dir!r} is the val2014 folder itself: pass its parent {parent!r}"
            if os.path.basename(os.path.normpath(ref_dir)) == "val2014" else "")
    raise FileNotFoundError(f"--ref_dir {ref_dir!r} has no val2014/ folder{hint} (--ref_dir is the COCO-2014 folder "
                            "that holds val2014/, as for LlamaGen's evaluation.py)")


def prefixed(tokenize, prefix=CLIP_SCORE_PREFIX):
    """Tokenizer wrapper: "A photo depicts " + caption. With OpenAI BPE this equals the released insertion of the
    prefix's 3 tokens after the start token, cut to 77 tokens with EOT forced in the last column."""
    return lambda captions: tokenize([prefix + c for c in captions])


def make_clip_score(path=None):
    """Eval CLIP score: OpenAI CLIP ViT-B/32 (open_clip; path = local file or None for the 'openai' tag).
    Returns a rewards.ClipReward: (images01, captions) -> (B,) 100 x cosine, bicubic resize to 224 (§11)."""
    # DEVIATION(RankE@2798acc): the released eval runs OpenAI's `clip` package on GPU (fp16 weights); open_clip's
    # port of the same weights runs here in fp32 (differences at the 1e-3 level of the cosine).
    if path is None:
        try:
            path = rewards.open_clip.download_pretrained(rewards.open_clip.get_pretrained_cfg("ViT-B-32", "openai"))
        except Exception as e:
            raise FileNotFoundError(
                f"CLIP score: could not download OpenAI CLIP ViT-B/32 ({type(e).__name__}: {e}). Download "
                "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin"
                " and pass its path (eval_fid.py --clip PATH)") from e
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP score: weights {path!r} not found (OpenAI CLIP ViT-B/32 file expected)")
    model = rewards.load_open_clip("ViT-B-32", path, quick_gelu=True)
    tok = rewards.open_clip.get_tokenizer("ViT-B-32")
    return rewards.ClipReward(model, prefixed(tok), image_size=224, mean=rewards.OPENAI_MEAN, std=rewards.OPENAI_STD,
                              scale=100.0, name="clip_score", resize="bicubic")


@torch.no_grad()
def clip_score_folder(paths, captions, clip_fn, eval_res, *, batch_size=50, num_workers=4, device="cpu"):
    """Mean CLIP score x 100 over image files (crop + Lanczos to eval_res, then clip_fn's own preprocessing)."""
    if len(paths) != len(captions):
        raise ValueError(f"{len(paths)} images but {len(captions)} captions")
    loader = torch.utils.data.DataLoader(_Folder(paths, eval_res), batch_size=batch_size, num_workers=num_workers)
    scores, i = [], 0
    for u8 in tqdm(loader, desc="CLIP score"):
        scores.append(clip_fn(u8.to(device).float() / 255.0, captions[i:i + len(u8)])[0].double().cpu())
        i += len(u8)
    return float(torch.cat(scores).mean())


def evaluate_coco(fake_dir, ref_dir, *, inception, clip_fn=None, n=None, eval_res=256, cache_dir=".cache/fid",
                  batch_size=50, num_workers=4, device="cpu"):
    """FID (fake_dir/images vs every image of ref_dir/val2014) and, if clip_fn is given, CLIP score with
    fake_dir/captions.txt. n: the number of samples expected (default: as many as captions.txt has lines)."""
    paths, caps = read_coco_folder(fake_dir, n)
    mu_r, s_r = reference_stats(coco_reference_dir(ref_dir), inception, eval_res=eval_res, cache_dir=cache_dir,
                                batch_size=batch_size, num_workers=num_workers)
    mu_f, s_f = feature_stats(folder_features(paths, inception, eval_res, batch_size=batch_size,
                                              num_workers=num_workers, desc="samples"))
    out = {"fid": frechet_distance(mu_f, s_f, mu_r, s_r), "n": len(paths), "eval_res": eval_res}
    if clip_fn is not None:
        out["clip_score"] = clip_score_folder(paths, caps, clip_fn, eval_res, batch_size=batch_size,
                                              num_workers=num_workers, device=device)
    return out


# --------------------------------------------------------------------------------------------------- HPSv2 / GenEval
def hps_prompts(prompts_dir, style):
    path = os.path.join(prompts_dir, f"{style}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HPDv2 benchmark prompts {path} not found (files anime.json, concept-art.json, "
                                "paintings.json, photo.json of the hpsv2 benchmark, each a JSON list of prompts)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hps_record_path(image_dir):
    """Where sample.py keeps a finished HPSv2 run's identity (prompts digest, checkpoint, seed): a hidden file inside
    the first style folder, since hpsv2 takes every entry of image_dir as a style."""
    return os.path.join(image_dir, HPS_STYLES[0], ".sampled_with.json")


def hps_prompts_sha1(prompts):
    """{style: [prompt]} -> the digest sample.py records, so scoring can check the images answer these prompts."""
    return hashlib.sha1(json.dumps(prompts, sort_keys=True).encode()).hexdigest()


def hps_extras(image_dir):
    """Entries hpsv2 would take as styles (every entry of the folder: hpsv2/evaluation.py:118) besides the 4 styles."""
    return set(os.listdir(image_dir)) - set(HPS_STYLES) if os.path.isdir(image_dir) else set()


def hps_preprocess(img, size=224):
    """HPS preprocess_val minus its normalisation (the reward adds it): ToTensor, then a bicubic antialiased resize of
    the short side to size and a centre crop, both on the float tensor (hpsv2/src/open_clip/transform.py:141-157), so
    neither rounds nor clamps -> float (3,S,S) in [0,1] up to the bicubic overshoot."""
    a = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)      # (3,H,W)
    return rewards.resize_short_side_center_crop(a[None], size)[0]


@torch.no_grad()
def hps_benchmark(image_dir, prompts_dir, reward_fn, *, batch_size=20, device="cpu"):
    """HPS v2.1 on the HPDv2 benchmark: {style: mean raw score, "average": mean over all images} (not x100).
    reward_fn: rewards.make_reward("hpsv2"); each image goes through hps_preprocess first (the official
    preprocessing, image by image), so the reward's own resize/crop is then the identity. Reads what hpsv2
    reads, {style}/{idx:05d}.jpg; refuses an unfinished run, a missing image (hpsv2 would skip it) and a stray entry
    beside the style folders (hpsv2 would fail on it)."""
    check_finished(image_dir)
    refuse_extras(hps_extras(image_dir), image_dir, "hpsv2 (every entry is a style)")
    by_style = {style: hps_prompts(prompts_dir, style) for style in HPS_STYLES}
    if os.path.isfile(hps_record_path(image_dir)):     # sampled by sample.py: the images must answer these prompts
        with open(hps_record_path(image_dir), encoding="utf-8") as f:
            was = json.load(f).get("prompts_sha1")
        if was is not None and was != hps_prompts_sha1(by_style):
            raise ValueError(f"{image_dir} was sampled from other prompts than {prompts_dir}'s "
                             f"({hps_record_path(image_dir)} holds their digest): score it with the prompts it was "
                             f"sampled from")
    out, all_scores = {}, []
    for style in HPS_STYLES:
        prompts, scores = by_style[style], []
        for s in tqdm(range(0, len(prompts), batch_size), desc=f"HPS {style}"):
            files = [os.path.join(image_dir, style, f"{i:05d}.jpg")
                     for i in range(s, min(s + batch_size, len(prompts)))]
            missing = [p for p in files if not os.path.isfile(p)]
            if missing:
                old = " (a .png of an older sample.py is there: hpsv2 reads .jpg only, re-sample)" if os.path.isfile(
                    missing[0][:-4] + ".png") else ""
                raise FileNotFoundError(f"missing {missing[0]}{old}: run sample.py --bench hps with the same flags")
            x = torch.stack([hps_preprocess(Image.open(p)) for p in files]).to(device)               # (b,3,224,224)
            # DEVIATION: fp32 scores; hpsv2.evaluate runs the model under CUDA fp16 autocast (evaluation.py:138)
            scores.append(reward_fn(x, prompts[s:s + len(files)])[0].double().cpu() / 100.0)  # raw HPS, not x100
        scores = torch.cat(scores)
        out[style] = float(scores.mean())
        all_scores.append(scores)
    out["average"] = float(torch.cat(all_scores).mean())  # = mean of style means when counts are equal
    return out


def geneval_counted(out_dir):
    r"""What GenEval's evaluate_images.py would read (evaluation/evaluate_images.py:263-273): {digit-named sub-folder:
    the names in its samples/ that re.match(r"\d+\.png")}."""
    found = {}
    for sub in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        samples = os.path.join(out_dir, sub, "samples")
        if os.path.isdir(os.path.join(out_dir, sub)) and sub.isdigit():
            names = os.listdir(samples) if os.path.isdir(samples) else []
            found[sub] = [n for n in names if os.path.isfile(os.path.join(samples, n)) and re.match(r"\d+\.png", n)]
    return found


# --------------------------------------------------------------------------------------------------- CLI
def _self_check():
    # Diagonal Gaussians: FD = ||mu1-mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)); and FD of sampled features.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    closed = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    fd = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    x = rng.normal(size=(20000, 8)) * np.sqrt(s1) + mu1
    y = rng.normal(size=(20000, 8)) * np.sqrt(s2) + mu2
    print(f"closed form {closed:.6f} | frechet_distance {fd:.6f} | from 20k samples each "
          f"{frechet_distance(*feature_stats(x), *feature_stats(y)):.4f} | FD(x, x) = "
          f"{frechet_distance(*feature_stats(x), *feature_stats(x)):.2e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="RankE evaluation (docs/method.md §11); no subcommand = self-check")
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("coco", help="FID + CLIP score of fake_dir/images/*.png with fake_dir/captions.txt "
                                    "(made by sample.py --bench coco)")
    c.add_argument("--fake_dir", required=True)
    c.add_argument("--ref_dir", required=True, help="the COCO-2014 folder holding val2014/ (as for LlamaGen's "
                                                    "evaluation.py); every image of ref_dir/val2014 is the reference")
    c.add_argument("--inception", required=True, help=f"local inception-2015-12-05.pt ({InceptionFeatures.URL})")
    c.add_argument("--clip", default=None, help="local OpenAI ViT-B/32 weights (default: open_clip 'openai' tag)")
    c.add_argument("--no_clip", action="store_true", help="skip the CLIP score")
    c.add_argument("--n", type=int, default=None, help="samples expected (default: the lines of captions.txt)")
    c.add_argument("--eval_res", type=int, default=256, help="256 LlamaGen, 384 Janus")
    c.add_argument("--cache_dir", default=".cache/fid", help="where reference statistics are cached")
    c.add_argument("--batch_size", type=int, default=50)
    c.add_argument("--num_workers", type=int, default=4)
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    h = sub.add_parser("hps", help="HPS v2.1 on the HPDv2 benchmark folder layout {style}/{idx:05d}.jpg")
    h.add_argument("--image_dir", required=True)
    h.add_argument("--prompts_dir", required=True, help="folder with anime.json, concept-art.json, ... prompt lists")
    h.add_argument("--hps", default=None, help="local HPS_v2.1_compressed.pt (default: hf://xswu/HPSv2/...)")
    h.add_argument("--batch_size", type=int, default=20)
    h.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for p in (c, h):
        p.add_argument("--out", default=None, help="scores JSON (default: beside the folder, <folder>_scores.json)")
    args = ap.parse_args(argv)
    if args.cmd is None:
        return _self_check()
    # DEVIATION(LlamaGen@ce98ec4): its evaluation.py writes score.txt into --fake_dir (evaluations/t2i/evaluation.py:
    # 237-241); scores go beside the folder here, for every benchmark, since hpsv2 takes every entry of its folder as
    # a style (hpsv2/evaluation.py:118)
    folder = os.path.abspath(args.fake_dir if args.cmd == "coco" else args.image_dir)
    out_json = os.path.abspath(args.out or folder.rstrip(os.sep) + "_scores.json")
    if os.path.commonpath([out_json, folder]) == folder:
        raise SystemExit(f"--out {out_json} is inside {folder}, which the official evaluators read: write it elsewhere")
    try:   # the folder checks first, before any model is loaded
        if args.cmd == "coco":
            read_coco_folder(args.fake_dir, args.n), coco_reference_dir(args.ref_dir)
        else:
            check_finished(args.image_dir)
            refuse_extras(hps_extras(args.image_dir), args.image_dir, "hpsv2 (every entry is a style)")
    except (OSError, ValueError) as e:
        raise SystemExit(str(e))
    from ckpt import offline_if_unreachable   # the command line only: the functions above need no ckpt.py
    offline_if_unreachable()                   # no network: the CLIP / HPS hub files answer from the cache at once
    try:   # a missing weight or prompt file: its message (what, where from, which flag), not a traceback
        if args.cmd == "coco":
            inception = InceptionFeatures(args.inception, args.device)
            clip_fn = None if args.no_clip else make_clip_score(args.clip)
            res = evaluate_coco(args.fake_dir, args.ref_dir, inception=inception, clip_fn=clip_fn, n=args.n,
                                eval_res=args.eval_res, cache_dir=args.cache_dir, batch_size=args.batch_size,
                                num_workers=args.num_workers, device=args.device)
        else:
            for style in HPS_STYLES:                               # the prompt files before the model loads
                hps_prompts(args.prompts_dir, style)
            res = hps_benchmark(args.image_dir, args.prompts_dir, rewards.make_reward("hpsv2", path=args.hps),
                                batch_size=args.batch_size, device=args.device)
    except FileNotFoundError as e:
        raise SystemExit(f"{e}" + ("\n(eval_fid.py hps: pass the HPS file with --hps PATH)" if args.cmd == "hps"
                                   and "hpsv2 reward" in str(e) else ""))
    print(json.dumps(res, indent=1))
    write_text(out_json, json.dumps(res, indent=1) + "\n")
    print(f"[eval_fid] scores -> {out_json}")


if __name__ == "__main__":
    main()
