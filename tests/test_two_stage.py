"""The two-stage control of the toy comparison (docs/preregistration.md): Standard RL, then decoder-only steps on the
final policy's rollouts (`train.py --method decoder --init_policy CKPT`). Which parameters move in each stage.

Run: pytest -q tests/test_two_stage.py
"""
import pytest
import torch

import train
from test_train import DECODER_KEYS, initial_models, last_ckpt, run

pytestmark = pytest.mark.slow          # train.py runs end to end


def test_two_stage_moves_the_policy_then_only_the_decoder(toy_cache, tmp_path):
    gpt0, vq0 = initial_models(toy_cache)
    run(toy_cache, tmp_path / "rl", "--steps", "2", "--ckpt_every", "2", "--method", "grpo")
    rl = last_ckpt(tmp_path / "rl")
    # stage 1 (Standard RL): the policy moves, the tokenizer does not
    assert any(not torch.equal(rl["gpt"][k], v) for k, v in gpt0.items())
    assert all(torch.equal(rl["vq"][k], v) for k, v in vq0.items())
    run(toy_cache, tmp_path / "dec", "--steps", "2", "--ckpt_every", "2", "--method", "decoder", "--init_policy",
        str(tmp_path / "rl" / "ckpt_0000002.pt"))
    dec = last_ckpt(tmp_path / "dec")
    # stage 2 (decoder only): the policy is stage 1's final one, bit for bit, and stays frozen; the KL reference
    # and policy EMA are copies of it; the decoder (+ post_quant_conv) moves, the encoder and codebook do not
    for k, v in rl["gpt"].items():
        assert torch.equal(dec["gpt"][k], v), f"stage 2 changed policy entry {k}"
        assert torch.equal(dec["ref_gpt"][k].float(), v.float()) and torch.equal(dec["ema_gpt"][k].float(), v.float())
    for k, v in vq0.items():
        moved = not torch.equal(dec["vq"][k], v)
        assert moved == (k.startswith(DECODER_KEYS) and v.is_floating_point()), f"stage 2: vq entry {k} moved={moved}"
    assert dec["config"]["init_policy"] == str(tmp_path / "rl" / "ckpt_0000002.pt")


def test_init_policy_refuses_a_bad_checkpoint(toy_cache, tmp_path):
    with pytest.raises(SystemExit, match="--init_policy"):
        run(toy_cache, tmp_path / "x", "--steps", "1", "--method", "decoder", "--init_policy",
            str(tmp_path / "missing.pt"))
