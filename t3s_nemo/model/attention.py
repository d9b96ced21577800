"""Core attention on torch's scaled_dot_product_attention, for the layer spec without Transformer Engine.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] score matrix in the
training dtype (plus its softmax and the mask): at 16k tokens that is ~16 GB per layer for Qwen3-8B,
so without Transformer Engine long reasoning traces do not fit. `SDPAttention` has the same
constructor and forward signature and semantics, and calls `torch.nn.functional.scaled_dot_product_attention`,
which picks a flash / memory-efficient kernel on GPU (and the fused flash kernel on CPU). Packed
bins of SDPA_THD_MIN_TOKENS tokens or more arrive in the THD layout with `cu_seqlens` (the same
`PackedSeqParams` the Transformer Engine spec gets) and each example is attended on its own, so no
[s, s] mask is built; shorter bins come with megatron's block-diagonal mask, in one call.

Why not a library: megatron-core ships no SDPA core attention (its choices are the local one, TE and
flash-attn/FlashInfer, none of which is installed on a CPU box or a TE-less GPU node).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule


# Below this many tokens per bin the block-diagonal mask path is faster: the per-example loop's op
# overhead outweighs the [s, s] work. Measured on CPU, tiny preset, fwd+bwd per micro-batch (ms):
# 8 x 256 tokens (24 examples): mask 81, THD 155, local 121; 4 x 512 (14): mask 100, THD 131, local 191;
# 2 x 1024 (12): mask 136, THD 107, local 504. On GPU at these lengths both are fast; at 8k+ only THD is.
SDPA_THD_MIN_TOKENS = 1024


class SDPAttention(MegatronModule):
    """Drop-in `core_attention` for megatron-core's layer specs (same arguments as DotProductAttention).

    Inputs are [sq, b, heads, dim] (or [t, heads, dim] with THD packed_seq_params); the output is
    [sq, b, heads * dim] (or [t, heads * dim]), as megatron's Attention expects.
    """

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        from megatron.core.process_groups_config import ProcessGroupCollection
        from megatron.core.utils import divide

        super().__init__(config=config)
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ValueError(f"SDPAttention supports softmax_type 'vanilla' only, not {config.softmax_type!r}")
        if getattr(config, "window_size", None) is not None:
            raise ValueError("SDPAttention does not implement sliding-window attention")
        self.attn_mask_type = attn_mask_type
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        tp = pg_collection.tp.size()
        self.cp_group = getattr(pg_collection, "cp", None)
        self.cp = self.cp_group.size() if self.cp_group is not None else 1
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        head_dim = config.kv_channels
        # (apply_query_key_layer_scaling divides the scores by layer_number in DotProductAttention and its
        # softmax multiplies them back: the product is this plain scale)
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _causal(self, attn_mask_type) -> bool:
        from megatron.core.transformer.enums import AttnMaskType

        kind = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        return kind == AttnMaskType.causal

    def _sdpa(self, q, k, v, mask, causal):
        """q [b, h, sq, d], k/v [b, g, sk, d]; mask: bool, True where attention is allowed, or None
        (causal only applies without a mask)."""
        if self.groups != self.heads:
            # repeated rather than enable_gqa=True: torch's memory-efficient kernel (the one that takes a
            # mask) falls back to the quadratic math kernel with enable_gqa
            rep = self.heads // self.groups
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        sq, sk = q.shape[-2], k.shape[-2]
        if causal and mask is None and sq > 1 and sq != sk:
            # queries are the last sq positions (a KV cache, a context-parallel chunk): torch's is_causal
            # aligns top-left; this bias aligns bottom-right and, on GPU, runs in the flash/efficient kernels
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(sq, sk)
            causal = False
        dropout = self.dropout_p if self.training else 0.0
        # dropout draws from megatron's model-parallel RNG, as DotProductAttention's does
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else contextlib.nullcontext()
        with rng:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                  is_causal=causal and sq > 1, scale=self.softmax_scale)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support attention_bias")
        causal = self._causal(attn_mask_type)
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            # [t, h, d]: attend within each example; cu_seqlens has the example boundaries
            cu_q = packed_seq_params.cu_seqlens_q_padded
            cu_q = packed_seq_params.cu_seqlens_q if cu_q is None else cu_q
            cu_k = packed_seq_params.cu_seqlens_kv_padded
            cu_k = packed_seq_params.cu_seqlens_kv if cu_k is None else cu_k
            bq, bk = cu_q.tolist(), cu_k.tolist()
            if len(bq) != len(bk):
                raise ValueError("cu_seqlens_q and cu_seqlens_kv describe different numbers of sequences")
            if self.cp > 1:
                return self._context_parallel(query, key, value, bq, packed_seq_params.cu_seqlens_kv.tolist(),
                                              causal)
            outs = []
            for (q0, q1), (k0, k1) in zip(zip(bq[:-1], bq[1:]), zip(bk[:-1], bk[1:])):
                q = query[q0:q1].permute(1, 0, 2).unsqueeze(0)
                k = key[k0:k1].permute(1, 0, 2).unsqueeze(0)
                v = value[k0:k1].permute(1, 0, 2).unsqueeze(0)
                outs.append(self._sdpa(q, k, v, None, causal)[0].permute(1, 0, 2))
            out = torch.cat(outs, dim=0) if outs else query.new_zeros(query.shape)
            return out.reshape(out.shape[0], -1)
        if packed_seq_params is not None:
            raise ValueError(f"SDPAttention: packed sequences in the {packed_seq_params.qkv_format!r} layout "
                             "are not supported (use 'thd')")
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)
            # megatron fills masked scores with -10000, so a row with no allowed key attends uniformly to
            # all of them; scaled_dot_product_attention would return NaN there
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        out = self._sdpa(q, k, v, mask, causal and attention_mask is None)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)

    def _context_parallel(self, query, key, value, padded: list[int], real: list[int], causal: bool):
        """THD attention of this CP rank's queries (chunks r and 2cp-1-r of every example: see
        t3s_nemo/training/context_parallel.py) against the whole examples' keys and values, all-gathered
        over the CP group (their gradients reduce-scattered back). padded/real: cu_seqlens with and
        without each example's padding, over the unsplit micro-batch.

        Why all-gather rather than Transformer Engine's ring: one collective per layer and plain SDPA
        calls; each rank holds every example's K and V (2 x groups x dim per token), as Llama 3's context
        parallelism does. No mask is built: query chunk j (positions jc..(j+1)c-1) attends, causally, to
        the keys before its end with bottom-right alignment, or, bidirectionally, to the example's real
        keys (its padding comes after them, so causal real queries never reach it either).
        """
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        cp, rank = self.cp, self.cp_group.rank()
        t = query.shape[0]
        if t != padded[-1] // cp or any((b - a) % (2 * cp) for a, b in zip(padded[:-1], padded[1:])):
            raise ValueError(f"SDPAttention: context parallelism needs every example padded to a multiple of "
                             f"2 x cp = {2 * cp} tokens (cu_seqlens_padded; t3s_nemo/training/context_parallel.py)")
        k_all = gather_from_sequence_parallel_region(key, group=self.cp_group).view(cp, t, *key.shape[1:])
        v_all = gather_from_sequence_parallel_region(value, group=self.cp_group).view(cp, t, *value.shape[1:])
        # an example's chunks in order: the first halves of ranks 0..cp-1, then the second halves of cp-1..0
        order = [(r, 0) for r in range(cp)] + [(r, 1) for r in reversed(range(cp))]
        outs = []
        for i in range(len(padded) - 1):
            c = (padded[i + 1] - padded[i]) // (2 * cp)
            lo = padded[i] // cp  # where example i starts in every rank's local tokens
            k = torch.cat([k_all[r, lo + h * c: lo + (h + 1) * c] for r, h in order])
            v = torch.cat([v_all[r, lo + h * c: lo + (h + 1) * c] for r, h in order])
            n = real[i + 1] - real[i]
            for half, j in enumerate((rank, 2 * cp - 1 - rank)):
                q = query[lo + half * c: lo + (half + 1) * c]
                end = (j + 1) * c if causal else n  # keys this chunk may see
                out = self._sdpa(*(x.permute(1, 0, 2).unsqueeze(0) for x in (q, k[:end], v[:end])), None, causal)
                outs.append(out[0].permute(1, 0, 2))
        out = torch.cat(outs, dim=0) if outs else query.new_zeros(query.shape)
        return out.reshape(out.shape[0], -1)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        return {}  # no parameters (vanilla softmax only)
