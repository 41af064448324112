"""Peak-memory estimate for a training configuration, without weights: `python train.py --dry_run [flags]`
builds the configured models on the meta device, prints parameter counts and a per-component memory estimate
for the chosen batch.

Activations are MEASURED as the bytes autograd saves during a forward on meta tensors (fp32), then halved under
bf16 autocast (an approximation: norms and logits stay fp32). The total is a sum, an upper bound: the stages of
an iteration run one after another. Self-check: python dry_run.py (the released LlamaGen-XL batch)

Symbols: B prompts per GPU and micro-batch, G samples per prompt (BG = B*G rollouts), N image tokens, T caption
slots (LlamaGen) or prompt tokens (Janus).
"""
import copy

import torch

import policy
import vq as vqlib


def saved_activation_bytes(fn) -> int:
    """Bytes autograd saves for backward while fn() runs: on meta tensors this measures without computing."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def dry_run(cfg):
    """Build the configured models on the meta device (no weights), print parameter counts, and estimate peak
    memory per component for the chosen batch. Activations are MEASURED as the bytes autograd saves on meta
    tensors (fp32), then halved under bf16 autocast (an approximation: norms and logits stay fp32)."""
    xl, jan = cfg.backbone == "llamagen_xl", cfg.backbone == "janus_pro_1b"
    GB, act = 1024 ** 3, (0.5 if cfg.bf16 else 1.0)
    B, BG = cfg.batch_prompts, cfg.batch_prompts * cfg.group_size
    rows = cfg.logp_chunk or BG
    if jan:   # Janus-Pro-1B generation path (janus.py); T = a typical templated prompt length, left-padded
        import janus
        gcfg = copy.deepcopy(janus.JANUS_CONFIGS[getattr(cfg, "janus_config", "janus_pro_1b")])
        vcfg, N, T, n_layer, width = janus.janus_vq_config(gcfg), gcfg.image_tokens, 64, gcfg.n_layer, gcfg.dim
        with torch.device("meta"):
            gpt = janus.JanusGen(gcfg)
            cond, mask = torch.zeros(rows, T, dtype=torch.long), torch.ones(rows, T, dtype=torch.bool)
        logprobs = janus.token_logprobs
    else:
        gcfg = copy.deepcopy(policy.GPT_CONFIGS["GPT-XL-t2i" if xl else "toy"])
        vcfg, N, T, n_layer, width = vqlib.VQ_CONFIGS["vq16" if xl else "toy"], gcfg.block_size, gcfg.cls_token_num, \
            gcfg.n_layer, gcfg.dim
        with torch.device("meta"):
            gpt = policy.GPT(gcfg)
            cond, mask = torch.empty(rows, T, gcfg.caption_dim), torch.ones(rows, T, dtype=torch.bool)
        logprobs = policy.token_logprobs
    gpt.cfg.grad_ckpt = cfg.grad_ckpt
    with torch.device("meta"):
        vq, disc = vqlib.VQModel(vcfg), vqlib.PatchGAN()
        tok = torch.zeros(rows, N, dtype=torch.long)
        z = torch.empty(max(B, B * cfg.rank_k), vcfg.codebook_embed_dim, int(N ** 0.5), int(N ** 0.5))
    n = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    n_gpt, n_dec, n_vq, n_disc = n(gpt.parameters()), n(vq.decoder_parameters()), n(vq.parameters()), n(disc.parameters())
    vq.requires_grad_(True)
    gpt_act = saved_activation_bytes(lambda: logprobs(gpt, cond, mask, tok)) * act
    dec_act = saved_activation_bytes(lambda: vq.decode(z)) * act
    est = {
        "policy weights+grads+AdamW (fp32, 16 B/param)": 16 * n_gpt,
        "reference policy (fp32, frozen)": 4 * n_gpt,
        "EMA policy (fp32)": 4 * n_gpt,
        f"KV cache for rollouts ([cond; null] = {2 * BG} rows, T={T})": 2 * (2 * BG) * n_layer * (T + N) * width * 4 * act,
        f"policy activations, log-prob forward with grad ({rows} rows, grad_ckpt={cfg.grad_ckpt})": gpt_act,
        "VQ (fp32) + EMA VQ + decoder grads/AdamW": 8 * n_vq + 12 * n_dec,
        f"decoder activations ({z.shape[0]} images per backward pass)": dec_act,
        "discriminator + AdamW": 16 * n_disc,
    }
    if xl:
        est["FLAN-T5-XL encoder (bf16, 1.22B params)"] = 2 * 1.22e9
    if xl or jan:   # Janus encodes its own prompts; its understanding tower is not loaded (docs/method.md §17.1)
        est["reward CLIP ViT-L-14 (fp32, 427.6M) + LPIPS VGG16 features (14.7M)"] = 4 * (427.6e6 + 14.7e6)
    print(f"[dry_run] backbone={cfg.backbone}  policy {n_gpt:,} params  VQ {n_vq:,} (decoder+post_quant_conv "
          f"trainable {n_dec:,})  discriminator {n_disc:,}  batch {B} prompts x G={cfg.group_size} per micro-batch "
          f"(x grad_accum {getattr(cfg, 'grad_accum', 1)} per update)")
    for k, v in est.items():
        print(f"  {k:<78s} {v / GB:8.2f} GiB")
    print(f"  {'TOTAL (sum: an upper bound, the stages run one after another)':<78s} {sum(est.values()) / GB:8.2f} GiB")
    return est


if __name__ == "__main__":  # the released LlamaGen-XL batch (train.py --backbone llamagen_xl --dry_run prints the same)
    from types import SimpleNamespace
    est = dry_run(SimpleNamespace(backbone="llamagen_xl", grad_ckpt=True, bf16=True, batch_prompts=4, group_size=8,
                                  logp_chunk=0, rank_k=1))
    assert 20 * 1024 ** 3 < sum(est.values()) < 80 * 1024 ** 3, "implausible estimate for the released batch"
