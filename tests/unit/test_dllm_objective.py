"""dLLM objective: hand computation at a fixed seed, prompt never noised, union contains targets, 1/t."""

import torch

from t3s_nemo.dllm.objective import apply_noise, dllm_loss, loss_weight, masked_fraction, sample_noise


def _batch():
    resp = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    return resp, seg


def test_noise_matches_hand_computation_at_fixed_seed():
    resp, seg = _batch()
    eps = 0.01
    noise, t = sample_noise(resp, seg, torch.Generator().manual_seed(3), eps=eps)
    g = torch.Generator().manual_seed(3)
    t_seg = eps + (1 - eps) * torch.rand((1, 2), generator=g)
    u = torch.rand((1, 8), generator=g)
    expect_t = torch.stack([t_seg[0, int(i)] for i in seg[0]]).unsqueeze(0)
    assert torch.equal(t, expect_t)
    assert torch.equal(noise, (u < expect_t) & resp.bool())
    ce = torch.arange(8, dtype=torch.float32).reshape(1, 8) + 0.5
    w = loss_weight(noise, t)
    hand = sum(float(ce[0, i]) / float(expect_t[0, i]) for i in range(8) if noise[0, i]) / int(resp.sum())
    assert abs(float(dllm_loss(ce, w, resp)) - hand) < 1e-5


def test_prompt_never_noised_and_mask_token_applied():
    resp, seg = _batch()
    for s in range(20):
        noise, _ = sample_noise(resp, seg, torch.Generator().manual_seed(s), targets=torch.ones_like(resp))
        assert not noise[resp == 0].any()
        assert noise[resp == 1].all()  # all-target union noises every response token
    tokens = torch.arange(8).reshape(1, 8)
    noise, _ = sample_noise(resp, seg, torch.Generator().manual_seed(0), targets=resp)
    noised = apply_noise(tokens, noise, mask_token_id=99)
    assert torch.equal(noised[noise], torch.full((int(noise.sum()),), 99))
    assert torch.equal(noised[~noise], tokens[~noise])


def test_union_contains_targets_and_raises_masked_fraction():
    resp = torch.ones((4, 64), dtype=torch.long)
    seg = torch.zeros((4, 64), dtype=torch.long)
    targets = torch.rand((4, 64), generator=torch.Generator().manual_seed(1)) < 0.3
    plain, _ = sample_noise(resp, seg, torch.Generator().manual_seed(5))
    union, _ = sample_noise(resp, seg, torch.Generator().manual_seed(5), targets=targets)
    assert union[targets].all()
    assert torch.equal(union, plain | targets)
    assert masked_fraction(union, resp) >= masked_fraction(plain, resp)
    assert masked_fraction(union, resp) == float(union.float().mean())


def test_weights_are_inverse_noise_level():
    noise = torch.tensor([[True, False, True]])
    t = torch.tensor([[0.5, 0.25, 0.1]])
    assert torch.allclose(loss_weight(noise, t), torch.tensor([[2.0, 0.0, 10.0]]))


def test_train_recipe_refuses_dllm_until_wired(tmp_path):
    import pytest

    from recipes.train import parse_args
    from t3s_nemo.errors import T3SError

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  path: {tmp_path / 'd'}\n")
    with pytest.raises(T3SError, match="objective=dllm"):
        parse_args(["--mode", "sft", str(cfg), "model.objective=dllm"])
    assert parse_args(["--mode", "sft", str(cfg)])[0] == "sft"
