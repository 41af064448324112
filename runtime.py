"""Plumbing for train.py: the run / system flags (RunConfig), the dataclass-to-flags parser and the flag checks (RULES,
SCOPES), processes and devices (torchrun), BatchNorm-buffer averaging, run checkpoints with a cross-rank weight check,
--init_policy, resume, and logging. Nothing in this file is part of the method; train.py holds the algorithm and its
flags (docs/method.md §3).

Self-check:  python runtime.py   (writes a checkpoint of a small module to a temp dir, resumes it, compares bits)

Symbols: rank / world = this process's index / the number of processes (torchrun), m = train.Models.
"""
import argparse
import hashlib
import inspect
import json
import os
import resource
import typing
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.distributed as dist

import ckpt

# ----------------------------------------------------------------------------------------------------------------
# Run / system flags: what is read (data, weights) and written (checkpoints, logs, grids), devices and precision.
# The method's hyperparameters are train.AlgoConfig; train.Config is both, one flat object (one flag per field).
@dataclass
class RunConfig:
    out_dir: str = "runs/tiny"     # checkpoints, metrics.jsonl, sample grids
    resume: bool = False           # continue from the newest readable checkpoint in out_dir
    init_policy: str = ""          # start the policy (its KL reference and EMA too) from this train.py checkpoint's
    #                                policy: the toy comparison's two-stage control (toy/reproduce.py); "" = base
    ckpt_every: int = 100          # checkpoint interval (steps); written atomically
    keep_ckpts: int = 3            # how many checkpoints to keep
    sample_every: int = 100        # PNG grid of current samples every N steps (0 = never)
    logger: Literal["none", "tensorboard", "wandb"] = "none"   # tensorboard / wandb only if installed
    report_n: int = 256            # toy world: base vs final table + before/after and curves PNGs at the end, scored
    #                                on report_n captions per split (toy/report.py); 0 = off
    # data
    data: str = ""                 # folder / .jsonl / .tar[,...]; "" = the toy world's own generator
    toy_cache: str = ".cache/toy"  # where the toy world's base models are cached
    # LlamaGen paths (local files, or hf://owner/repo/file)
    gpt_ckpt: str = "hf://peizesun/llamagen_t2i/t2i_XL_stage1_256.pt"
    vq_ckpt: str = "hf://peizesun/llamagen_t2i/vq_ds16_t2i.pt"
    t5_path: str = "google/flan-t5-xl"
    clip_path: str = ""            # ViT-L-14 OpenAI weights ("" = open_clip download)
    hps_path: str = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt"
    lpips_vgg: str = ""            # torchvision vgg16 weights file ("" = torchvision download)
    lpips_lin: str = ""            # LlamaGen's lpips vgg.pth ("" = download)
    # Janus-Pro-1B paths (docs/method.md §17)
    janus_ckpt: str = "hf://deepseek-ai/Janus-Pro-1B/pytorch_model.bin"   # original or HF-converted layout
    janus_tokenizer: str = "deepseek-ai/Janus-Pro-1B"  # folder with the tokenizer files (or the hub id)
    # systems
    device: Literal["auto", "cpu", "cuda"] = "auto"   # auto = cuda when available
    bf16: bool = True              # bf16 autocast on GPU (fp32 master weights); ignored on CPU
    grad_ckpt: bool = False        # activation checkpointing in the policy's training forward (D10)
    dry_run: bool = False          # build without weights, print parameter counts and a memory estimate
    synthetic: str = ""            # RANDOM weights, nothing read (perf/synthetic.py): full (bare flag) | L | tiny
    #                                L: real widths, every transformer stack L layers deep; tiny: CPU-test scale


BARE_FLAGS = {"synthetic": "full"}   # str flags that may be given without a value, and the value they then take


def check_synthetic(value: str) -> str | None:
    """--synthetic value -> None if valid, else a message naming the fix (scales: perf/synthetic.py)."""
    if value in ("", "full", "tiny") or (value.isdigit() and int(value) >= 1):
        return None
    return f"--synthetic {value!r}: use full (real sizes), tiny (CPU tests) or a layer count >= 1 (e.g. 2)"


def parse_dataclass_flags(cls, presets, argv, default_preset, preset_keys=("backbone",)):
    """One flag per field of the dataclass `cls` (and of its dataclass bases); its help text is the comment after the
    field, its allowed values those of a Literal[...] type. --preset NAME (or default_preset(**the preset_keys flags
    given, None where absent)) picks the defaults from presets[NAME]; explicit flags override them. Returns (config,
    the set of field names given on the command line)."""
    pre = argparse.ArgumentParser(add_help=False)
    for key in ("preset", *preset_keys):
        pre.add_argument(f"--{key}", default=None)
    known, _ = pre.parse_known_args(argv)
    preset = known.preset or default_preset(**{k: getattr(known, k) for k in preset_keys})
    if preset not in presets:
        raise SystemExit(f"--preset {preset!r}: choose one of {sorted(presets)}")
    defaults = {**asdict(cls()), **presets[preset], "preset": preset}
    try:
        src = [l for c in cls.__mro__ if "__dataclass_fields__" in vars(c) for l in inspect.getsource(c).splitlines()]
    except OSError:   # `python -m cProfile train.py` runs train.py with cProfile as __main__: no source to read.
        src = []      # The help texts are then the defaults alone; the flags parse the same.
    types = typing.get_type_hints(cls)

    def parser(default):                     # default(name) -> the flag's default value
        p = argparse.ArgumentParser(description="RankE post-training (train.py)",
                                    formatter_class=argparse.RawTextHelpFormatter)
        for f in fields(cls):
            i = next((i for i, l in enumerate(src) if l.strip().startswith(f"{f.name}: ")), len(src))
            notes = [src[i].split("#", 1)[1].strip()] if i < len(src) and "#" in src[i] else []
            while i + 1 < len(src) and src[i + 1].strip().startswith("#   "):  # continuation lines (indented "#")
                i += 1
                notes.append(src[i].strip()[1:].strip())
            help_ = " ".join(notes + [f"(default: {defaults.get(f.name)!r})"])
            typ, choices = types[f.name], (tuple(presets) if f.name == "preset" else None)
            if typing.get_origin(typ) is Literal:          # the allowed values, written once on the field
                choices = typing.get_args(typ)
                typ = type(choices[0])
            if typ is bool:
                p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), nargs="?", const=True,
                               default=default(f.name), help=help_)
            else:
                bare = dict(nargs="?", const=BARE_FLAGS[f.name]) if f.name in BARE_FLAGS else {}
                p.add_argument(f"--{f.name}", type=typ, default=default(f.name), choices=choices, help=help_, **bare)
        return p
    cfg = cls(**vars(parser(defaults.get).parse_args(argv)))
    given = set(vars(parser(lambda name: argparse.SUPPRESS).parse_args(argv)))   # only the flags on the line
    return cfg, given


# ----------------------------------------------------------------------------------------------------------------
# Flag checks of train.parse_config, which reports every violation at once. Allowed values: (requirement, test, flags).
RULES = [(">= 1", lambda v: v >= 1, ("steps", "total_steps", "batch_prompts", "grad_accum", "ckpt_every", "keep_ckpts",
                                    "ppo_epochs", "ema_gpt_every")),
         (">= 2 (advantages are normalised within each prompt's group)", lambda v: v >= 2, ("group_size",)),
         ("> 0", lambda v: v > 0, ("temperature", "tau_start", "tau_end", "tau_frac", "clip_eps")),
         (">= 1 (1 = no guidance; the released samplers guide only above 1)", lambda v: v >= 1, ("cfg_scale",)),
         ("in (0, 1]", lambda v: 0 < v <= 1, ("top_p",)),
         ("in [0, 1]", lambda v: 0 <= v <= 1, ("vapi_xi", "ema_gpt_decay", "ema_vq_decay")),
         (">= 0", lambda v: v >= 0, ("sample_every", "logp_chunk", "disc_start", "top_k", "lr_gpt", "lr_decoder",
                                    "lr_disc", "weight_decay", "grad_clip", "beta_kl", "lambda_gan",
                                    "lambda_reward", "lambda_recon", "lambda_consist", "disc_weight", "vapi_ce",
                                    "vapi_kl"))]


def check_values(cfg) -> list:
    """One message per flag value outside its allowed range (RULES, --report_n, --rank_k), and runs not built."""
    bad = [f"--{f} {getattr(cfg, f)}: must be {req}" for req, ok, fs in RULES for f in fs if not ok(getattr(cfg, f))]
    if cfg.report_n < 0 or cfg.report_n in (1, 2):
        bad.append(f"--report_n {cfg.report_n}: must be 0 (off) or >= 3 (KID's unbiased estimate, feature covariance)")
    if not 1 <= cfg.rank_k <= cfg.group_size:
        bad.append(f"--rank_k {cfg.rank_k}: must be in [1, group_size={cfg.group_size}]")
    if cfg.logp_cfg == "guided" and cfg.temperature != 1:   # token_logprobs' guided logits are temperature 1
        bad.append(f"--logp_cfg guided --temperature {cfg.temperature}: the guided log-probs are those of the "
                   "temperature-1 guided logits (docs/method.md §4.5), not the sampler's; use --temperature 1 or "
                   "--logp_cfg cond")
    if cfg.backbone == "janus_pro_1b" and cfg.method == "vapi" and cfg.janus_config == "janus_pro_1b":
        bad.append("--backbone janus_pro_1b --method vapi: the released Janus VA-pi run (AlexNet LPIPS of the lpips "
                   "package, weight decay 1e-4; docs/method.md §12) is not built here: this would run LlamaGen's VGG "
                   "LPIPS with the Janus RankE preset. Run VA-pi with --backbone llamagen_xl (--janus_config tiny "
                   "only tests the plumbing)")
    return bad


# Flags that act only in some runs (docs/method.md §15; the world / backbone flags: backbones.WORLD_SCOPES). Given on
# the command line in a run where they do nothing, they are an error, unless they restate the value the run has anyway
# (so one flag list can serve several methods) or switch off what the run does not do (OFF_VALUES).
POLICY_METHODS, DECODER_METHODS = ("ranke", "grpo"), ("ranke", "decoder")
OFF_VALUES = {"sample_every": 0, "report_n": 0}
SCOPES = [  # (flags, applies(cfg), what they act on)
    (("cfg_scale", "temperature", "top_k", "top_p", "sample_every"), lambda c: c.method != "vapi",
     "the autoregressive rollouts and their sample grids, which --method vapi does not draw"),
    (("lr_gpt", "grad_ckpt"), lambda c: c.method != "decoder", "the policy update, which --method decoder never makes"),
    (("beta_kl", "kl_ref", "kl_estimator", "ppo_epochs", "logp_cfg", "logp_chunk", "ema_gpt_decay", "ema_gpt_every"),
     lambda c: c.method in POLICY_METHODS, "the policy step of --method ranke / grpo"),
    (("kl_ref", "kl_estimator"), lambda c: c.beta_kl > 0, "the KL term, which --beta_kl 0 removes"),
    (("clip_eps",), lambda c: c.method in POLICY_METHODS and c.ppo_epochs > 1,
     "the PPO clip, which binds only from a second epoch (--ppo_epochs > 1; one epoch has rho == 1, D7)"),
    (("lr_decoder", "lr_disc", "rank_k", "rank_mode", "lambda_gan", "lambda_reward", "lambda_recon", "lambda_consist",
      "disc_start", "disc_weight", "ema_vq_decay"), lambda c: c.method in DECODER_METHODS,
     "the decoder and discriminator steps of --method ranke / decoder"),
    (("tau_start", "tau_end", "tau_frac", "total_steps"),
     lambda c: c.method in DECODER_METHODS and c.rank_mode == "reward" and c.rank_k > 1,
     "the rank-weight temperature, which acts only with --rank_k > 1 and --rank_mode reward (K = 1: w == 1, D2)"),
    (("vapi_xi", "vapi_ce", "vapi_kl"), lambda c: c.method == "vapi", "VA-pi (--method vapi)")]


def check_scopes(cfg, given, defaults, scopes) -> list:
    """One message per flag given (`given`) that does nothing in this run (`scopes`), unless a default or OFF value."""
    idle = {}
    for flags, applies, what in scopes:
        for f in flags:
            v = getattr(cfg, f)
            if f in given and v != defaults[f] and v != OFF_VALUES.get(f) and not applies(cfg) and f not in idle:
                idle[f] = f"--{f} {v}: does nothing in this run; it acts on {what}. Drop --{f}, or change the run"
    if not idle:
        return []
    return [*idle.values(), f"(this run: --backbone {cfg.backbone} --method {cfg.method}, "
            f"{'--data ' + cfg.data if cfg.data else 'no --data'}{', --synthetic' if cfg.synthetic else ''})"]


def setup_distributed(cfg):
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process. Returns rank, world size,
    device and an autocast factory (bf16 on CUDA when --bf16; weights stay fp32)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine has no usable CUDA device (torch.cuda.is_available() is False); "
                         "use --device cpu (or auto), or run on a GPU machine")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local = 0, 1, 0
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bf16 = use_cuda and cfg.bf16
    return rank, world, device, lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)


def allreduce_grads(params, world):
    """Average the gradients of `params` over ranks with one flat all_reduce (a missing grad counts as zeros)."""
    if world == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for p in params:
        p.grad = flat[i: i + p.numel()].view_as(p).clone()
        i += p.numel()


def average_buffers(module, world):
    """BatchNorm running statistics differ per rank (local batches): average them so every rank holds the same D."""
    if world > 1:
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= world


def fingerprint(modules) -> str:
    """sha1 over every parameter and buffer: equal strings <=> bit-identical weights (checked across ranks)."""
    h = hashlib.sha1()
    for mod in modules:
        for k, v in mod.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


STATE = ("gpt", "ref_gpt", "ema_gpt", "vq", "ema_vq", "disc", "opt_gpt", "opt_dec", "opt_disc")


def save_checkpoint(cfg, m, step, gen, stream, reward_fn, world, rank):
    """All ranks send their RNG/data state, reward text cache (rewards.ClipReward.cache_state says why) and a
    weight fingerprint; rank 0 checks the fingerprints agree and writes one checkpoint atomically (temp file +
    rename), keeping the newest --keep_ckpts."""
    state = {"gen": gen.get_state(), "data": stream.state_dict(), "fingerprint": fingerprint([m.gpt, m.vq, m.disc])}
    if hasattr(reward_fn, "cache_state"):
        state["reward_cache"] = reward_fn.cache_state()
    states = [state]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, state)
    if len({s["fingerprint"] for s in states}) != 1:          # every rank must hold the same weights
        raise RuntimeError(f"ranks diverged at step {step}: weight fingerprints {[s['fingerprint'] for s in states]}")
    if rank == 0:
        ck = dict(config=dict(vars(cfg)), step=step, world_size=world, rank_state=states,
                  threads=torch.get_num_threads(),        # results depend on it (float reduction order)
                  **{k: getattr(m, k).state_dict() for k in STATE})
        ckpt.atomic_save(ck, os.path.join(cfg.out_dir, f"ckpt_{step:07d}.pt"))
        for old in ckpt.list_ckpts(cfg.out_dir)[:-cfg.keep_ckpts]:
            os.remove(old)


def load_init_policy(cfg):
    """--init_policy: the train.py checkpoint whose policy this run starts from ("" = none), read before any model is
    built; a bad file, or a policy of another --backbone, exits with a message naming the fix."""
    try:
        init_ckpt = cfg.init_policy and ckpt.load_ckpt(cfg.init_policy, flag="--init_policy", need=("gpt", "config"),
                                                       what="a train.py checkpoint (OUT_DIR/ckpt_NNNNNNN.pt)")
    except ckpt.CkptError as e:
        raise SystemExit(str(e))
    if init_ckpt and init_ckpt["config"].get("backbone") != cfg.backbone:
        raise SystemExit(f"--init_policy {cfg.init_policy!r} holds a --backbone {init_ckpt['config'].get('backbone')} "
                         f"policy; this run is --backbone {cfg.backbone}: pass a checkpoint of the same backbone")
    return init_ckpt


# flags a resumed run may change: its length and what it writes where, and the files the frozen parts load from (a
# run may move between machines). Any other difference from the checkpoint's config is refused by resume().
RESUME_MAY_CHANGE = {"steps", "resume", "out_dir", "ckpt_every", "keep_ckpts", "sample_every", "logger", "report_n",
                     "device", "dry_run", "grad_ckpt", "preset", "toy_cache", "gpt_ckpt", "vq_ckpt", "t5_path",
                     "clip_path", "hps_path", "lpips_vgg", "lpips_lin", "janus_ckpt", "janus_tokenizer"}


def resume(cfg, m, gen, stream, reward_fn, world, rank) -> int:
    """Load the newest readable checkpoint of --out_dir into models, optimizers, RNG, data stream and reward text
    cache (bit-exact)."""
    if not ckpt.list_ckpts(cfg.out_dir):
        return 0
    ck, path = ckpt.load_latest_ckpt(cfg.out_dir)
    was, now = ck["config"].get("synthetic", ""), getattr(cfg, "synthetic", "")
    if was != now:   # perf/synthetic.py: random weights must never pass for trained ones, nor one scale for another
        raise SystemExit(f"{path} was written with --synthetic {was!r} ('' = real weights), this run has --synthetic "
                         f"{now!r}: runs of different --synthetic values never share checkpoints; pick another "
                         f"--out_dir or the checkpoint's --synthetic value")
    if ck["world_size"] != world:
        raise SystemExit(f"{path} was written by {ck['world_size']} processes; resume with the same count")
    same = lambda k, a, b: os.path.realpath(a) == os.path.realpath(b) if k == "init_policy" and a and b else a == b
    changed = [f"--{k} {ck['config'][k]!r} -> {v!r}" for k, v in vars(cfg).items()
               if k in ck["config"] and k not in RESUME_MAY_CHANGE and not same(k, ck["config"][k], v)]
    if changed:      # e.g. a new --init_policy would be overwritten by the checkpoint's policy without a word
        raise SystemExit(f"{path} belongs to another run than these flags describe ({'; '.join(changed)}): resume "
                         f"with the checkpoint's values, or start the new run in another --out_dir")
    if ck.get("threads", torch.get_num_threads()) != torch.get_num_threads() and rank == 0:
        print(f"[resume] note: {path} was written at {ck['threads']} torch threads, this process has "
              f"{torch.get_num_threads()}: the run continues along other floats than an uninterrupted one", flush=True)
    for k in STATE:
        getattr(m, k).load_state_dict(ck[k])
    gen.set_state(ck["rank_state"][rank]["gen"])
    stream.load_state_dict(ck["rank_state"][rank]["data"])
    if "reward_cache" in ck["rank_state"][rank]:    # absent in checkpoints written before the cache was saved
        reward_fn.load_cache_state(ck["rank_state"][rank]["reward_cache"])
    if rank == 0:
        print(f"[resume] {path} at step {ck['step']}", flush=True)
    return ck["step"]


def _step_of(line):
    """The "step" of one metrics.jsonl line, or None if the line is not a complete JSON record."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


class Logger:
    """metrics.jsonl (always) and, on request, TensorBoard or Weights & Biases; rank 0 only."""

    def __init__(self, cfg, master, start_step=0):
        """start_step: the step the run starts from (0, or the resumed checkpoint's). Lines of later steps in an
        existing metrics.jsonl (logged after that checkpoint, or by an earlier run in this out_dir) are dropped, so
        every step is in metrics.jsonl once (TensorBoard / W&B keep what they were sent)."""
        self.f = self.tb = self.wb = None
        # every metrics line of a synthetic run (random weights, perf/synthetic.py) says so
        self.tag = {"synthetic": cfg.synthetic} if getattr(cfg, "synthetic", "") else {}
        os.makedirs(cfg.out_dir, exist_ok=True)
        if not master:
            return
        path = os.path.join(cfg.out_dir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip()]
            keep = [line for line in lines if _step_of(line) is not None and _step_of(line) <= start_step]
            torn = sum(_step_of(line) is None for line in lines)
            if torn:     # a line cut by a kill / full disk: it holds no complete record
                print(f"[log] {path}: dropped {torn} unreadable line(s) (cut off mid-write)", flush=True)
            with open(path + ".tmp", "w") as f:
                f.writelines(keep)
            os.replace(path + ".tmp", path)
        self.f = open(path, "a")
        if cfg.logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(cfg.out_dir)
        if cfg.logger == "wandb":
            import wandb
            self.wb = wandb.init(project="ranke", config=dict(vars(cfg)), dir=cfg.out_dir)

    def write(self, stats, step, bar):
        if self.f is None:
            return
        bar.set_postfix({**{k.split("/")[-1]: f"{v:.3g}" for k, v in stats.items()
                            if k in ("reward/mean", "policy/kl", "decoder/total", "step_time_s")}, **self.tag})
        self.f.write(json.dumps({**stats, **self.tag}) + "\n")
        self.f.flush()
        for k, v in stats.items() if self.tb else ():
            self.tb.add_scalar(k, v, step)
        if self.wb:
            self.wb.log(stats, step=step)

    def close(self):
        if self.f is not None:
            self.f.close()


def peak_memory_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024 ** 3


def teardown(world):
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    import tempfile
    from types import SimpleNamespace
    torch.manual_seed(0)
    nets = {k: torch.nn.Linear(3, 2) for k in ("gpt", "ref_gpt", "ema_gpt", "vq", "ema_vq", "disc")}
    opts = {f"opt_{k}": torch.optim.AdamW(nets[v].parameters()) for k, v in (("gpt", "gpt"), ("dec", "vq"),
                                                                             ("disc", "disc"))}

    class Stream:   # the data stream's resumable state, as train.py's streams provide it
        def __init__(self):
            self.i = 0

        def state_dict(self):
            return {"i": self.i}

        def load_state_dict(self, d):
            self.i = d["i"]
    class Reward:   # the reward's text-feature cache, as rewards.ClipReward provides it
        def __init__(self):
            self.cache = {"prompts": [], "features": torch.zeros(0)}

        def cache_state(self):
            return self.cache

        def load_cache_state(self, state):
            self.cache = state
    cfg = RunConfig(out_dir=tempfile.mkdtemp(), keep_ckpts=2)
    m, gen, stream, reward = SimpleNamespace(**nets, **opts), torch.Generator().manual_seed(1), Stream(), Reward()
    stream.i, reward.cache = 7, {"prompts": ["a red cube"], "features": torch.ones(1, 4)}
    save_checkpoint(cfg, m, 3, gen, stream, reward, world=1, rank=0)
    before = fingerprint(nets.values())
    for net in nets.values():
        torch.nn.init.zeros_(net.weight)
    stream.i, gen, reward = 0, torch.Generator().manual_seed(99), Reward()
    step = resume(cfg, m, gen, stream, reward, world=1, rank=0)
    assert step == 3 and stream.i == 7 and fingerprint(nets.values()) == before, "resume is not bit-exact"
    assert reward.cache["prompts"] == ["a red cube"], "resume lost the reward's text cache"
    print(f"runtime self-check: checkpoint at step {step} written to {cfg.out_dir} and restored bit-exactly")
