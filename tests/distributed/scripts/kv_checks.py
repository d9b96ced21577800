"""The megatron sampler's KV-cache estimate (recipes/sample.py) against what megatron-core's static
inference context really allocates for a tiny model. Prints JSON."""

import json

import torch


def main():
    from megatron.core.inference.contexts import StaticInferenceContext

    from t3s_nemo.config import Config
    from t3s_nemo.recipes.sample import kv_cache_rows, kv_row_bytes
    from t3s_nemo.training.distributed import init_distributed, init_model_parallel
    from t3s_nemo.training.setup import build_model

    init_distributed()
    cfg = Config()
    cfg.train.precision = "fp32"
    init_model_parallel(cfg.parallel)
    bundle = build_model(cfg, 512, 64)
    model = bundle.chunks[0].eval()
    rows, max_len = 3, 40
    context = StaticInferenceContext(max_batch_size=rows, max_sequence_length=max_len)
    tokens = torch.randint(0, 454, (rows, 5))
    with torch.no_grad():  # the first forward with a context allocates every layer's K and V
        model(tokens, torch.arange(5).expand(rows, 5), None, inference_context=context)
    allocated = sum(t.numel() * t.element_size() for kv in context.key_value_memory_dict.values() for t in kv)
    estimate = kv_row_bytes(bundle.shape, 1, max_len, bundle.dtype)
    print("RESULT " + json.dumps({"allocated_per_row": allocated / rows, "estimate_per_row": estimate,
                                  "layers": len(context.key_value_memory_dict),
                                  "rows_in_10_rows_of_memory": kv_cache_rows(bundle.shape, 1, max_len, bundle.dtype,
                                                                             10 * estimate, fraction=1.0)}))


if __name__ == "__main__":
    main()
