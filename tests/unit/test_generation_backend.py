"""Which sampler `generation.backend` stands for, and that tp > 1 never lands on the one-device backend."""

import pytest
import torch

from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.generate import resolve_backend

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks vllm where CUDA (and vllm) are")


@cpu_only
def test_auto_on_one_device_is_transformers():
    assert resolve_backend("auto") == "transformers"


@cpu_only
def test_auto_on_several_devices_samples_the_checkpoint_with_megatron():
    # without vLLM, tp > 1 is megatron-core's tensor-parallel sampler on the t3s snapshot itself
    assert resolve_backend("auto", tp=8) == "megatron"
    with pytest.raises(T3SError, match="generation.tp=8: sampling a Hugging Face directory on 8 GPUs needs vLLM"):
        resolve_backend("auto", tp=8, checkpoint=False)


def test_transformers_refuses_tp():
    with pytest.raises(T3SError, match="generation.tp=2: the transformers backend samples on one device"):
        resolve_backend("transformers", tp=2)
    assert resolve_backend("transformers", tp=1) == "transformers"


def test_explicit_backends_and_the_dllm():
    assert resolve_backend("vllm", tp=8) == "vllm"
    assert resolve_backend("megatron", tp=2) == "megatron"
    assert resolve_backend("auto", "dllm", tp=4) == "megatron"
    with pytest.raises(T3SError, match="a dLLM"):
        resolve_backend("transformers", "dllm")
    with pytest.raises(T3SError, match="'foo' is not one of"):
        resolve_backend("foo")
