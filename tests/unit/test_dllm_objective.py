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


def test_dllm_bins_are_unshifted_and_carry_targets(packed_copy):
    """Labels are the tokens themselves; response mask and targets sit on the token they describe."""
    import numpy as np

    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import DllmBins

    ds = PackedDataset(packed_copy)
    rng = np.random.default_rng(0)
    values = {eid: rng.integers(0, 2, len(ds.read_example(i)) - int(ds.prompt_lengths[i])).astype(np.uint8)
              for i, eid in enumerate(ds.ids)}
    ds.add_channel("dllm_targets", values, "uint8", span="response")
    item = DllmBins(PackedDataset(packed_copy), target_channel="dllm_targets")[0]
    assert torch.equal(item["labels"], item["tokens"])
    r = PackedDataset(packed_copy).bin_range(0)
    first = r.start
    n, p = len(ds.read_example(first)), int(ds.prompt_lengths[first])
    assert item["response_mask"][:p].sum() == 0 and item["response_mask"][p:n].sum() == n - p
    assert torch.equal(item["targets"][p:n], torch.from_numpy(values[ds.ids[first]]).float())
    assert item["targets"][:p].sum() == 0


def test_mask_token_is_an_extra_id_when_the_tokenizer_has_none(demo_packed):
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import choose_mask_token, model_vocab_size

    ds = PackedDataset(demo_packed[0])
    mid = choose_mask_token(ds)  # the demo tokenizer has no mask token
    assert mid == ds.vocab_size and model_vocab_size(ds, mid) == ds.vocab_size + 1
    assert choose_mask_token(ds, 7) == 7 and model_vocab_size(ds, 7) == ds.vocab_size


def test_noise_is_a_function_of_seed_step_and_rank(demo_packed):
    from t3s_nemo.data.dataset import collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import DllmBins, add_noise_seeds, noise_batch

    bins = DllmBins(PackedDataset(demo_packed[0]))

    def noised(step, rank):
        (b,) = add_noise_seeds([collate([bins[0], bins[1]])], 5, step, rank)
        return noise_batch(b, mask_token_id=999, eps=1e-3), b

    (a, batch), (b, _), (c, _), (d, _) = noised(3, 0), noised(3, 0), noised(4, 0), noised(3, 1)
    assert torch.equal(a["input_ids"], b["input_ids"])  # a resumed step redraws the same noise
    assert not torch.equal(a["input_ids"], c["input_ids"]) and not torch.equal(a["input_ids"], d["input_ids"])
    hit = a["input_ids"] == 999
    assert hit.any() and not (hit & (batch["response_mask"] == 0)).any()  # never the prompt
    assert torch.equal(hit, a["loss_weight"] > 0) and a["noised_tokens"] == hit.sum()


def test_noise_does_not_depend_on_the_data_parallel_size(demo_packed):
    """Ranks take contiguous slices of a step's bins: two micro-batches on one replica get the seeds they
    get on two replicas of one micro-batch each (so DP/EP layouts train on the same noise)."""
    from t3s_nemo.data.dataset import collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import DllmBins, add_noise_seeds

    bins = DllmBins(PackedDataset(demo_packed[0]))
    one = add_noise_seeds([collate([bins[0]]), collate([bins[1]])], 5, 3, 0)
    two = add_noise_seeds([collate([bins[0]])], 5, 3, 0) + add_noise_seeds([collate([bins[1]])], 5, 3, 1)
    assert [int(b["noise_seed"]) for b in one] == [int(b["noise_seed"]) for b in two]
    assert int(one[0]["noise_seed"]) != int(one[1]["noise_seed"])


def test_dllm_refuses_ar_mask_rules(demo_packed):
    import pytest

    from t3s_nemo.config import Config
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import open_dllm_data
    from t3s_nemo.errors import T3SError

    cfg = Config()
    cfg.mask.rule = "ar"
    with pytest.raises(T3SError, match="mask.rule"):
        open_dllm_data(cfg, PackedDataset(demo_packed[0]))
