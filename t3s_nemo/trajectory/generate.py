"""Sampling answers from an exported Hugging Face model: n samples per prompt, prompts given as token ids.

Backends:
    transformers  AutoModelForCausalLM + model.generate (KV cache, left padding); CPU or one GPU
    vllm          vLLM's offline LLM engine (tensor parallel); GPU, `pip install 't3s-nemo[eval]'`
    megatron      megatron-core's inference engine on a t3s checkpoint (KV cache, tensor parallel), no
                  export (t3s_nemo/trajectory/megatron_sampler.py); CPU or GPU
    auto          vllm when CUDA is there and vllm imports; else transformers at tp=1, megatron for a t3s
                  checkpoint at tp > 1 (a Hugging Face directory at tp > 1 needs vllm); a dLLM: megatron

transformers and vllm read an exported Hugging Face directory; megatron reads the t3s checkpoint itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from t3s_nemo.console import console
from t3s_nemo.errors import T3SError

BACKENDS = ("auto", "transformers", "vllm", "megatron")


@dataclass
class Sample:
    text: str  # decoded response, special tokens removed
    num_tokens: int  # generated tokens, including the end-of-sequence token when the model emitted one


def resolve_backend(backend: str, objective: str = "ar", tp: int = 1, checkpoint: bool = True) -> str:
    """The backend `auto` stands for here: vllm where CUDA and an importable vllm are; else, to sample on tp
    > 1 devices, megatron (from the t3s checkpoint itself; `checkpoint` says whether there is one rather
    than only a Hugging Face directory); else transformers, which samples on one device.

    A dLLM (objective dllm) is no Qwen3ForCausalLM: only megatron's backend samples it (block-wise
    remasking, t3s_nemo/dllm/sampler.py), so auto means megatron for it.
    """
    if backend not in BACKENDS:
        raise T3SError(f"generation backend '{backend}' is not one of {' | '.join(BACKENDS)}")
    if objective == "dllm":
        if backend not in ("auto", "megatron"):
            raise T3SError(f"generation.backend={backend}: a dLLM (model.objective=dllm) is sampled with its remasking "
                           "sampler on megatron; use generation.backend=megatron (or auto)")
        return "megatron"
    if backend == "transformers" and tp > 1:  # it would load the whole model on one device
        raise T3SError(f"generation.tp={tp}: the transformers backend samples on one device; use "
                       "generation.backend=vllm or megatron to split the model, or generation.tp=1")
    if backend != "auto":
        return backend
    import torch

    if torch.cuda.is_available():
        try:
            import vllm  # noqa: F401

            return "vllm"
        except Exception:  # not installed, or installed for another torch/CUDA: fall back, do not fail
            pass
    if tp > 1:
        if checkpoint:
            return "megatron"
        raise T3SError(f"generation.tp={tp}: sampling a Hugging Face directory on {tp} GPUs needs vLLM "
                       "(pip install 't3s-nemo[eval]'), and it does not import here; the transformers backend "
                       "samples on one device (generation.tp=1), megatron samples t3s checkpoints")
    return "transformers"


def generate(
    hf_dir: str | Path,
    prompts_token_ids: Sequence[Sequence[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    *,
    backend: str = "auto",
    tp: int = 1,
    on_progress: Optional[Callable[[int], None]] = None,
    tokenizer_dir: Optional[Path] = None,
) -> list[list[Sample]]:
    """n samples for every prompt (result[i][k] = sample k of prompt i); temperature 0 = greedy.

    hf_dir is a Hugging Face model directory, or a t3s checkpoint for backend=megatron (tokenizer_dir:
    its tokenizer, default the one its marker names).

    on_progress(k) is called with the number of prompts finished since the last call.
    """
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise T3SError(f"generation: n, max_new_tokens and batch_size must be >= 1 (got {n}, {max_new_tokens}, {batch_size})")
    if not prompts_token_ids:
        return []
    if any(len(p) == 0 for p in prompts_token_ids):
        raise T3SError("generation: an empty prompt (no tokens) cannot be sampled from")
    prompts = [list(map(int, p)) for p in prompts_token_ids]
    which = resolve_backend(backend, tp=tp, checkpoint=not (Path(hf_dir) / "config.json").is_file())
    if which == "megatron":
        from t3s_nemo.trajectory.megatron_sampler import sample_checkpoint

        out = sample_checkpoint(Path(hf_dir), prompts, n, temperature, top_p, max_new_tokens, seed, batch_size, tp,
                                tokenizer_dir)
        if on_progress:
            on_progress(len(prompts))
        return out
    if which == "vllm":
        return _generate_vllm(Path(hf_dir), prompts, n, temperature, top_p, max_new_tokens, seed, tp, on_progress)
    return _generate_transformers(Path(hf_dir), prompts, n, temperature, top_p, max_new_tokens, seed, batch_size,
                                  on_progress)


def _generate_transformers(hf_dir: Path, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                           max_new_tokens: int, seed: int, batch_size: int,
                           on_progress: Optional[Callable[[int], None]]) -> list[list[Sample]]:
    from t3s_nemo.data.tokenizer import load_tokenizer

    tok = load_tokenizer(hf_dir)
    with _quiet_transformers():
        return _run_transformers(hf_dir, tok, prompts, n, temperature, top_p, max_new_tokens, seed, batch_size,
                                 on_progress)


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading bars or ignored-flag warnings from transformers inside our own progress display."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _run_transformers(hf_dir: Path, tok, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                      max_new_tokens: int, seed: int, batch_size: int,
                      on_progress: Optional[Callable[[int], None]]) -> list[list[Sample]]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, set_seed

    from t3s_nemo.data.tokenizer import pad_id, stop_token_ids

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 matmuls are slow on CPU; on GPU keep the checkpoint's dtype
    dtype = "auto" if device.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype, local_files_only=True)
    except OSError as e:
        raise T3SError(f"{hf_dir}: cannot load the model: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    stops, pad = stop_token_ids(tok), pad_id(tok)
    # every sampling knob explicit: generate() fills unset ones from the exported generation_config.json
    # (a Qwen3 release's has top_k=20) and transformers' defaults (top_k=50); vLLM's are temperature + top_p only
    sampling = temperature > 0
    per_prompt = n if sampling else 1  # greedy samples are all the same: decode once, repeat
    gen = GenerationConfig(
        do_sample=sampling, temperature=temperature if sampling else 1.0, top_p=top_p if sampling else 1.0,
        top_k=0, min_p=None, repetition_penalty=1.0, max_new_tokens=max_new_tokens, num_return_sequences=per_prompt,
        eos_token_id=stops, pad_token_id=pad, use_cache=True,
    )
    # longest first: batches of similar length waste less compute on padding
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    limit, warned = getattr(model.config, "max_position_embeddings", None), False
    out: list[Optional[list[Sample]]] = [None] * len(prompts)
    try:
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            # as for vLLM: a prompt and its answer stay within the model's context (RoPE past it is noise).
            # Each row has its own room: the batch runs as far as its shortest prompt allows, and every
            # row is cut where its own prompt + answer reach the limit.
            room = {i: max_new_tokens if limit is None else min(max_new_tokens, limit - len(prompts[i])) for i in idx}
            if min(room.values()) < 1:
                raise T3SError(f"{hf_dir}: a prompt of {width} tokens fills the model's context "
                               f"(max_position_embeddings {limit})")
            if min(room.values()) < max_new_tokens and not warned:
                warned = True
                console.print(f"note: prompt + max_new_tokens {max_new_tokens} exceeds the model's context "
                              f"(max_position_embeddings {limit}); an answer ends where prompt + answer reach {limit} tokens")
            set_seed(seed + b)  # reproducible per batch whatever ran before
            with torch.inference_mode():
                seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen,
                                      max_new_tokens=max(room.values()))
            new = seqs[:, width:].cpu().tolist()
            for r, i in enumerate(idx):
                out[i] = [_sample(tok, new[r * per_prompt + k % per_prompt][: room[i]], stops) for k in range(n)]
            if on_progress:
                on_progress(len(idx))
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out  # type: ignore[return-value]


def _sample(tok, ids: list[int], stops: list[int]) -> Sample:
    """Cut a generated row after its first stop token (tokenizer.stop_token_ids); rows without one ran to
    the end (nothing to cut)."""
    ends = [ids.index(t) for t in stops if t in ids]
    if ends:
        ids = ids[: min(ends) + 1]
    return Sample(text=tok.decode(ids, skip_special_tokens=True), num_tokens=len(ids))


def _generate_vllm(hf_dir: Path, prompts: list[list[int]], n: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int, tp: int,
                   on_progress: Optional[Callable[[int], None]]) -> list[list[Sample]]:
    try:
        import vllm
    except ImportError:
        raise T3SError("generation.backend=vllm: vLLM is not installed; pip install 't3s-nemo[eval]' (needs CUDA)") from None
    import torch

    if not torch.cuda.is_available():
        raise T3SError("generation.backend=vllm needs a CUDA GPU; use generation.backend=auto on CPU machines")
    # a context sized to the job, not the model's maximum, leaves more GPU memory for the KV cache
    max_len = max(len(p) for p in prompts) + max_new_tokens
    try:
        limit = int(json.loads((hf_dir / "config.json").read_text())["max_position_embeddings"])
        max_len = min(max_len, limit)
    except (OSError, KeyError, ValueError, TypeError):
        pass
    llm = vllm.LLM(model=str(hf_dir), tensor_parallel_size=tp, seed=seed, max_model_len=max_len)
    try:
        # a per-request seed: vLLM gives the n parallel samples of a request seeds seed, seed+1, ...
        from t3s_nemo.data.tokenizer import load_tokenizer, stop_token_ids

        params = vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                     stop_token_ids=stop_token_ids(load_tokenizer(hf_dir)))
        results = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        out = [[Sample(text=c.text, num_tokens=len(c.token_ids)) for c in r.outputs] for r in results]
    finally:
        del llm
        _free_vllm()
    if on_progress:
        on_progress(len(prompts))
    return out


def _free_vllm() -> None:
    """Release the GPU after one snapshot's engine, so the next snapshot's engine fits."""
    import torch

    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # the module moved between vLLM versions; freeing memory below still helps
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
