"""The answer at the end of `python train.py` on the toy world: base vs final policy, in numbers and pictures.

The paper's question (docs/method.md §1, §10-§11): does post-training raise the reward while image quality and the
token distribution the decoder was trained on hold? A toy run answers it for its own checkpoint with
    answer.md / answer.json   base vs final: training reward, eval CLIP (an independent CLIP), attribute-checker
                              accuracy on train and held-out captions, toy FID, toy KID, LCS KL (toy/eval.py's row; the
                              same captions and the same sampling seed for both, the run's own sampling settings), and
                              beside each change the spread of that change over seeds, as measured for this recipe by
                              `python -m toy.first_run` (toy/assets/first_run_spread.json): one run's change means
                              something only where it is beyond that spread
    before_after.png          the same captions and the same sampling seed, base models on the left, the run's final
                              policy + decoder on the right, captions written beside the rows, 32-px images x4
    curves.png                training curves from metrics.jsonl: reward, policy KL to the reference, decoder losses
The table is printed and saved; both PNGs go next to it in the run folder.

Run:    python -m toy.report --run runs/tiny          (train.py calls it at the end of a toy run; --report_n 0: off)
Tests:  pytest tests/test_toy_report.py
Depends on: torch, numpy, matplotlib; ckpt.py, perf/fast_sample.py (the sampler train.py uses); toy wing toy/world.py,
toy/eval.py. Part of the toy wing (toy/): no concept file imports it; train.py imports it inside main() only.
Symbols: n captions per split, R grid rows (captions), G samples per caption, S = 32 image side.
"""
import argparse
import json
import os

import numpy as np
import torch

import ckpt
from perf import fast_sample
from toy import eval as toy_eval
from toy import world as toy_world

ROWS = ("reward", "clip", "check_train", "check_heldout", "fid", "kid", "lcs_kl")
HIGHER_IS_BETTER = dict(reward=True, clip=True, check_train=True, check_heldout=True, fid=False, kid=False,
                        lcs_kl=False)
HEADLINE = ("reward", "check_heldout", "kid")   # the answer's headline (docs/preregistration.md, amendment 2)
UPSCALE = 4                                   # 32-px images drawn at 128 px (nearest neighbour)
SPREAD_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "first_run_spread.json")
# config fields that do not change what a run computes (where files go, how often they are written, which files
# are read for the real backbones): a run whose other fields all equal the measured recipe's gets its spread
NOT_RECIPE = {"seed", "preset", "out_dir", "resume", "ckpt_every", "keep_ckpts", "sample_every", "logger",
              "toy_cache", "device", "gpt_ckpt", "vq_ckpt", "t5_path", "clip_path", "hps_path", "lpips_vgg",
              "lpips_lin", "janus_ckpt", "janus_tokenizer", "janus_config", "dry_run", "synthetic"}


def recipe(config):
    """A run's config -> the fields that define what it computes (everything but NOT_RECIPE)."""
    return {k: v for k, v in config.items() if k not in NOT_RECIPE}


def load_spread(config, path=SPREAD_FILE, n=None, step=None, world_size=1):
    """-> (the measured spread of this run's recipe, or None, and a line saying which spread the table shows). With n
    and step (the table's captions per split, the checkpoint's step) also None unless the spread was measured at this
    n and the checkpoint is the run's last (a cut-off run's newest checkpoint is not the measured recipe). world_size:
    the run's process count (torchrun); each process draws --batch_prompts prompts, so another count is another
    recipe, though the config does not show it (the measured runs were single processes unless the file says so)."""
    if not os.path.exists(path):
        return None, f"No seed spread: {path} is missing (`python -m toy.first_run` measures it)."
    with open(path) as f:
        spread = json.load(f)
    differ = sorted(k for k in set(spread["recipe"]) | set(recipe(config))
                    if spread["recipe"].get(k) != recipe(config).get(k))
    if differ:
        return None, (f"No seed spread for this recipe: it differs from the measured one ({path}) in "
                      f"{', '.join(differ)}.")
    if world_size != spread.get("world_size", 1):
        return None, (f"No seed spread: this run trained on {world_size} processes ({world_size} x --batch_prompts "
                      f"prompts per update); the spread was measured on {spread.get('world_size', 1)}.")
    if n is not None and spread["n"] != n:             # `python -m toy.report --n` off the recipe's report_n
        return None, f"No seed spread at n = {n}: it was measured at n = {spread['n']}."
    if step is not None and step != config["steps"]:
        return None, (f"No seed spread: this checkpoint is at step {step} of the run's {config['steps']}; the spread "
                      f"was measured on finished runs.")
    return spread, (f"Seed spread: the change in {len(spread['seeds'])} runs of this recipe, seeds {spread['seeds']} "
                    f"({spread['where']}): mean [95 % t-interval], and the seeds whose change is > 0. Where the "
                    f"interval excludes 0 the recipe's mean change is beyond seed noise; one run's change scatters "
                    f"around that mean as the per-seed signs show. On another CPU, thread count or torch version "
                    f"the same seed trains along other floats: its change there is another draw from this spread "
                    f"(docs/first_run, amendment 4).")


def answer_table(base, final, n, spread=None):
    """Two toy_eval rows (and the recipe's measured spread) -> markdown lines: metric | base | final | change |
    which way is better [| change over seeds | seeds > 0]. Headline rows are in bold."""
    head = f"| metric (n = {n} captions per split) | base | final | change | better |"
    lines = [head + (" change over seeds | seeds > 0 |" if spread else ""),
             "|---|---:|---:|---:|---|" + ("---:|---|" if spread else "")]
    for k in ROWS:
        name = f"**{toy_eval.LABELS[k]}**" if k in HEADLINE else toy_eval.LABELS[k]
        line = (f"| {name} | {base[k]:.4f} | {final[k]:.4f} | {final[k] - base[k]:+.4f} | "
                f"{'higher' if HIGHER_IS_BETTER[k] else 'lower'} |")
        if spread:
            c, per_seed = spread["summary"][k], spread["changes"][k]
            signs = "".join("+" if d > 0 else "-" if d < 0 else "0" for d in per_seed)
            line += f" {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['pos']}/{len(per_seed)} ({signs}) |"
        lines.append(line)
    return lines


@torch.no_grad()
def before_after(run_cfg, final_ckpt, *, rows=8, G=4, seed=0):
    """-> (images (2, R*G, 3, S, S) in [-1,1]: base then final, captions R): half train, half held-out captions,
    each drawn with the same sampling generator state for base and final."""
    b = toy_world.load_toy(toy_world.ToyConfig.tiny() if run_cfg["toy_preset"] == "tiny" else toy_world.ToyConfig(),
                           cache_dir=run_cfg["toy_cache"], progress=False)
    g = torch.Generator().manual_seed(seed + 3)
    caps = b.world.sample(rows // 2, g, "train")[1] + b.world.sample(rows - rows // 2, g, "heldout")[1]
    cond, mask = b.text_encoder(caps)
    out = []
    for state in (None, final_ckpt):
        if state is not None:
            b.gpt.load_state_dict(state["gpt"])
            b.vq.load_state_dict(state["vq"])
        z = fast_sample.sample_gpt(b.gpt.eval(), cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0),
                                   cfg_scale=run_cfg["cfg_scale"], temperature=run_cfg["temperature"],
                                   top_k=run_cfg["top_k"], top_p=run_cfg["top_p"],
                                   generator=torch.Generator().manual_seed(seed))                     # (R*G, N)
        out.append(b.vq.eval().decode_indices(z).clamp(-1, 1))
    return torch.stack(out), caps


def save_before_after(path, images, caps, G, after="after training"):
    """The grid: one row per caption (text on the left), G base samples | G final samples, upscaled x4."""
    import matplotlib
    matplotlib.use("Agg")                                             # files only, no display
    import matplotlib.pyplot as plt
    R = len(caps)
    u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)       # (2, R*G, 3, S, S)
    u8 = u8.repeat_interleave(UPSCALE, -1).repeat_interleave(UPSCALE, -2)
    px = images.shape[-1] * UPSCALE                                    # one image's side on the page, in pixels
    fig, axes = plt.subplots(R, 2, figsize=((2 * G * px + 40) / 100, R * (px + 14) / 100), dpi=100, squeeze=False,
                             gridspec_kw=dict(wspace=40 / (G * px), hspace=14 / px, left=0, right=1, top=1, bottom=0))
    for r in range(R):
        for c, title in enumerate(("base models", after)):
            row = u8[c, r * G:(r + 1) * G].permute(2, 0, 3, 1).flatten(1, 2).numpy()   # (S', G*S', 3)
            ax = axes[r, c]
            ax.imshow(row, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
        split = "train" if r < R // 2 else "held-out"
        axes[r, 0].set_ylabel(f"{caps[r]}\n({split})", rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path + ".tmp.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def save_curves(path, metrics_path, window=20):
    """Training curves (running means over `window` steps) from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(metrics_path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    panels = [("reward/mean", "training reward (rollouts, EMA decoder)"), ("policy/kl", "policy KL to the reference"),
              ("decoder/gt_loss", "decoder: GT reconstruction loss"),
              ("decoder/consist_loss", "decoder: EMA consistency"),
              ("decoder/rankgan_loss", "decoder: Rank-GAN loss"), ("step_time_s", "seconds per step")]
    panels = [(k, t) for k, t in panels if any(k in r for r in recs)]
    rows = (len(panels) + 2) // 3                                    # three panels per row
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (k, title) in zip(axes.flat, panels):
        pts = np.array([(r["step"], r[k]) for r in recs if k in r], dtype=float)        # (steps, 2)
        w = min(window, len(pts))
        smooth = np.convolve(pts[:, 1], np.ones(w) / w, mode="valid")
        ax.plot(pts[:, 0], pts[:, 1], alpha=0.25, lw=0.8)
        ax.plot(pts[w - 1:, 0], smooth, lw=1.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def write_text(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def report(out_dir, ckpt_path, n=256, seed=0, spread_path=SPREAD_FILE):
    """Score base and final, write answer.md / answer.json / before_after.png / curves.png in out_dir, print the
    table (with the seed spread in spread_path when it was measured for this run's recipe at this n).
    -> {"base": row, "final": row}."""
    final = toy_eval.read_train_ckpt(ckpt_path, flag="checkpoint")
    conf = final["config"]
    # detail=False: the table shows no re-encode agreement and no LCS floor, so neither is computed (same numbers)
    base_row = toy_eval.evaluate_toy_checkpoint(None, toy_cache=conf["toy_cache"], toy_preset=conf["toy_preset"],
                                                n=n, seed=seed, sampling=conf, detail=False)
    final_row = toy_eval.evaluate_toy_checkpoint(ckpt_path, n=n, seed=seed, detail=False)
    spread, spread_line = load_spread(conf, spread_path, n=n, step=final["step"],
                                      world_size=final.get("world_size", 1))
    lines = [f"# {conf['method']} on the toy world: base vs step {final['step']} (seed {conf['seed']}, "
             f"{torch.get_num_threads()} threads)", ""] + answer_table(base_row, final_row, n, spread)
    lines += ["", spread_line]
    images, caps = before_after(conf, final, G=4, seed=seed)
    save_before_after(os.path.join(out_dir, "before_after.png"), images, caps, G=4,
                      after=f"after {conf['method']} training, step {final['step']}")
    save_curves(os.path.join(out_dir, "curves.png"), os.path.join(out_dir, "metrics.jsonl"))
    lines += ["", "before_after.png: the same captions and sampling seed, base (left) vs final (right).",
              "curves.png: training curves (running mean over 20 steps)."]
    write_text(os.path.join(out_dir, "answer.md"), "\n".join(lines) + "\n")
    write_text(os.path.join(out_dir, "answer.json"), json.dumps(
        {"base": base_row, "final": final_row, "n": n, "seed": seed, "threads": torch.get_num_threads(),
         "spread": spread and spread["summary"]}, indent=1))
    print("\n".join(lines))
    return {"base": base_row, "final": final_row}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Base vs final table and PNGs of a finished toy run.")
    ap.add_argument("--run", required=True, help="a train.py --out_dir of a toy run (uses its newest checkpoint)")
    ap.add_argument("--n", type=int, default=0, help="captions per split (0: the run's --report_n, else 256)")
    args = ap.parse_args()
    path = ckpt.list_ckpts(args.run)
    if not path:
        ap.error(f"--run {args.run!r}: no ckpt_*.pt there; pass the --out_dir of a finished toy run")
    run_n = toy_eval.read_train_ckpt(path[-1], flag="--run")["config"].get("report_n")
    report(args.run, path[-1], n=args.n or run_n or 256)
