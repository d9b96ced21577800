"""Single-process checks that megatron-core's MoE load-balancing aux loss reaches the gradients of the
tiny MoE dLLM the way the train recipe runs it (DDP, forward_backward_func, finalize_model_grads, the
per-step aux scale), and that the expert bias moves; prints one JSON object.

Run by tests/distributed/test_moe.py in a subprocess so megatron's parallel state stays out of pytest.
"""

import json
import sys
from functools import partial

import torch


def main() -> None:
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from t3s_nemo.config import Config
    from t3s_nemo.data.dataset import collate
    from t3s_nemo.data.packed import PackedDataset
    from t3s_nemo.dllm.training import DllmBins, add_noise_seeds, choose_mask_token, dllm_forward_step, model_vocab_size
    from t3s_nemo.training import moe as tmoe
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model, unwrap, vocab_rows, wrap_ddp

    packed = PackedDataset(sys.argv[1])
    init_distributed()
    mask_id = choose_mask_token(packed)
    bins = DllmBins(packed)

    def grads(coeff: float) -> dict:
        cfg = Config()
        cfg.train.precision = "fp32"
        cfg.model.preset = "tiny_moe"
        cfg.model.objective = "dllm"
        cfg.model.moe_aux_loss_coeff = coeff
        init_model_parallel(cfg.parallel)
        bundle = build_model(cfg, vocab_rows(model_vocab_size(packed, mask_id), cfg.parallel.tp), packed.seq_length, bidirectional=True)
        model = wrap_ddp(bundle, cfg)
        bundle.tconfig.finalize_model_grads_func = finalize_model_grads
        scale = tmoe.AuxLossScale()
        bundle.tconfig.moe_grad_scale_func = scale
        inputs = []  # what the MoE layer's router sees, per micro-batch (for the hand computation below)
        unwrap(model)[0].decoder.layers[1].mlp.router.register_forward_pre_hook(
            lambda module, args: inputs.append(args[0].detach().clone()))
        batches = add_noise_seeds([collate([bins[0]]), collate([bins[1]])], 1234, 0, 0)
        scale.set(*tmoe.step_token_counts(batches, dllm=True))
        for m in model:
            m.zero_grad_buffer()
        get_forward_backward_func()(
            forward_step_func=partial(dllm_forward_step, mask_token_id=mask_id, eps=1e-3),
            data_iterator=iter(batches), model=model, num_microbatches=len(batches),
            seq_length=packed.seq_length, micro_batch_size=1, forward_only=False)
        chunk = unwrap(model)[0]
        out = {name: p.main_grad.detach().clone() for name, p in chunk.named_parameters()}
        out["router_inputs"] = inputs
        out["router_weight"] = chunk.decoder.layers[1].mlp.router.weight.detach().clone()
        out["expert_bias"] = chunk.decoder.layers[1].mlp.router.expert_bias.detach().clone()
        out["aux"] = tmoe.aux_loss_sum() / len(batches)
        out["scale"] = scale.value
        return out

    g0, g1, g2 = grads(0.0), grads(0.1), grads(0.2)
    router = "decoder.layers.1.mlp.router.weight"
    # the aux loss is a function of the router's probabilities: it reaches the router and, through the
    # router's input, the layers below it; never the experts or what comes after the MoE layer
    others = [k for k in g0 if "experts" in k or "final_layernorm" in k]

    # by hand: coeff x the Switch load-balancing loss E * sum_i f_i P_i (sigmoid scores normalised per
    # token, f_i = share of the top-k assignments, P_i = mean score), averaged over the micro-batches;
    # its gradient with respect to the router weight (the router's inputs held fixed)
    W = g1["router_weight"].clone().requires_grad_(True)
    E, k = W.shape[0], 2
    aux = 0.0
    for x in g1["router_inputs"]:
        s = torch.sigmoid(x.reshape(-1, x.shape[-1]).float() @ W.t())
        s = s / s.sum(-1, keepdim=True)
        chosen = torch.zeros_like(s).scatter(1, s.topk(k, dim=-1).indices, 1.0)
        aux = aux + E * (chosen.sum(0) / (s.shape[0] * k) * s.mean(0)).sum()
    (0.1 * aux / len(g1["router_inputs"])).backward()
    by_hand = W.grad
    d1, d2 = g1[router] - g0[router], g2[router] - g0[router]
    out = {
        "router_grad_change": float(d1.abs().max()),
        "router_grad_change_vs_hand_rel": float((d1 - by_hand).abs().max() / by_hand.abs().max()),
        "aux_by_hand": float(aux) / len(g1["router_inputs"]),
        "router_grad_linear_in_coeff": float((d2 - 2 * d1).abs().max() / d2.abs().max()),
        "downstream_grads_max_change": max(float((g1[k] - g0[k]).abs().max()) for k in others),
        "num_downstream_grads": len(others),
        "upstream_grad_change": float((g1["decoder.layers.0.mlp.linear_fc1.weight"]
                                       - g0["decoder.layers.0.mlp.linear_fc1.weight"]).abs().max()),
        "aux_loss": g1["aux"],
        "aux_loss_without_coeff": g0["aux"],
        "aux_scale": g1["scale"],
        "expert_bias_moved": float(g1["expert_bias"].abs().max()),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
