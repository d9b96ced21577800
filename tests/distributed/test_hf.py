"""Hugging Face import/export against real transformers Qwen3 models (tiny, random init)."""

import json
import os
import shutil
import sys

import pytest

from procs import DEMO, REPO, run_script, t3s


def tiny_hf_model(path, tie: bool, vocab_size: int = 512, dtype=None, **config):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096, **config}
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                      tie_word_embeddings=tie, **config)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1 so a swapped norm mapping cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(path)
    for f in DEMO.joinpath("tokenizer").iterdir():
        shutil.copy(f, path / f.name)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_import_and_export_match_transformers_logits(tie, tmp_path):
    hf = tmp_path / "hf"
    tiny_hf_model(hf, tie)
    r = run_script("hf_checks.py", hf, tmp_path)
    assert r["import_max_abs_diff"] < 1e-4
    assert r["export_max_abs_diff"] < 1e-4
    assert r["roundtrip_same_keys"] and r["roundtrip_max_abs_diff"] == 0.0
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(r["files"])
    assert r["generation"][:2] == [0.6, 0.95]


def test_cli_export_refuses_an_incomplete_checkpoint(tmp_path):
    import subprocess

    from procs import env

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").write_bytes(b"")  # DCP files were written, the marker never was
    (tmp_path / "run" / "snapshots").mkdir(parents=True)
    for src, message in ((tmp_path / "ckpt", "incomplete checkpoint (no t3s.json; its save was interrupted)"),
                         (tmp_path / "run", "not a t3s checkpoint (no t3s.json); this looks like a run directory")):
        p = subprocess.run([*t3s(), "export", str(src), "--out", str(tmp_path / "hf")], env=env(),
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert p.returncode == 1
        assert message in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "hf").exists()


def test_sft_starts_from_a_hugging_face_directory(tiny_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from procs import train
    from t3s_nemo.model.hf import export

    # like Qwen3 (151,936 rows for 151,669 tokens): more rows than the tokenizer's 454 ids, a multiple of 128
    # but not of 128 x tp, so re-padding them for tp=2 (768) would refuse the weights
    hf = tmp_path / "hf"
    tiny_hf_model(hf, tie=True, vocab_size=640)
    # a fine-tune's epsilon the preset does not have: the weights load, and the run says what it changes
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    run_dir, printed = tmp_path / "run", []
    records = train(run_dir, tiny_data, "train.steps=2", "train.global_batch_size=2", f"model.init={hf}",
                    "parallel.tp=2", "checkpoint.snapshot_step0=true", "checkpoint.snapshot_interval=1", nproc=2,
                    printed=printed)
    said = " ".join(printed[0].split())
    assert "was made with norm_eps 1e-05; this run uses 1e-06 (model.preset=tiny); to keep the weights' own, " \
           "set model.norm_eps=1e-05" in said, said[-3000:]
    assert said.count("was made with norm_eps") == 1  # rank 0 only
    # config.yaml records the length the run trained at (the dataset's 512), not the tiny config's 1024
    from t3s_nemo.config import load_config

    assert load_config(run_dir / "config.yaml").data.seq_length == 512
    assert (run_dir / "init_from_hf" / "t3s.json").is_file()
    assert [r["step"] for r in records] == [1, 2]
    assert json.loads((run_dir / "snapshots" / "step_2" / "t3s.json").read_text())["padded_vocab_size"] == 640
    # theta_0 of the run, the weights its first step trained, is the Hugging Face model, row for row
    export(run_dir / "snapshots" / "step_0", tmp_path / "out")  # in this process: no megatron needed
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 640
    original, exported = load_file(hf / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(exported) <= set(original) and "model.embed_tokens.weight" in exported
    assert all(torch.equal(exported[k], original[k]) for k in exported)


def test_import_refuses_bad_inputs(tmp_path):
    import subprocess

    from procs import env

    def imp(src):
        return subprocess.run([sys.executable, "-m", "t3s_nemo.model.hf", "import", str(src), str(tmp_path / "out")],
                              env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)

    hf = tmp_path / "hf"
    tiny_hf_model(hf, tie=True)
    cfg = json.loads((hf / "config.json").read_text())
    bad = tmp_path / "llama"
    shutil.copytree(hf, bad)
    (bad / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
    p = imp(bad)
    assert p.returncode == 1 and "model_type 'llama' is not supported" in p.stderr
    noweights = tmp_path / "noweights"
    shutil.copytree(hf, noweights)
    (noweights / "model.safetensors").unlink()
    p = imp(noweights)
    assert p.returncode == 1 and "no *.safetensors weights" in p.stderr
    wrong = tmp_path / "wrongshape"
    shutil.copytree(hf, wrong)
    (wrong / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=128)))
    p = imp(wrong)
    assert p.returncode == 1 and "error:" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_a_bf16_model_is_imported_in_bf16_and_exported_back_bit_for_bit(tmp_path, base_like_tokenizer_dir):
    # Qwen3 ships bf16 weights: the import keeps them bf16 (a 32B init checkpoint of 66 GB, not 131)
    import torch
    from safetensors.torch import load_file

    from procs import run
    from t3s_nemo.checkpoint.consolidate import read_full_state
    from t3s_nemo.errors import T3SError
    from t3s_nemo.model.hf import export

    hf = tmp_path / "hf"
    # a context and norm epsilon of no preset: export must declare the model's own, as Qwen3-8B's 40960
    tiny_hf_model(hf, tie=False, dtype=torch.bfloat16, max_position_embeddings=12288, rms_norm_eps=1e-5)
    run([*t3s(), "import", str(hf), "--out", str(tmp_path / "ckpt")])
    state, marker, _ = read_full_state(tmp_path / "ckpt")
    assert marker["dtype"] == "bfloat16" and {t.dtype for t in state.values()} == {torch.bfloat16}
    run([*t3s(), "export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    # shared like any file the user writes (safetensors creates its file 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "out").iterdir()} == {
        f.name: 0o666 & ~umask for f in (tmp_path / "out").iterdir()}
    original, exported = load_file(hf / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(exported) == set(original)
    assert all(exported[k].dtype == torch.bfloat16 and torch.equal(exported[k], original[k]) for k in original)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["max_position_embeddings"], config["rms_norm_eps"]) == (12288, 1e-5)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.6, 0.95, 0)  # as `t3s eval` samples
    # with a Base-style tokenizer (eos <|endoftext|>, turns end with <|im_end|>) transformers and vLLM must
    # stop at either
    export(tmp_path / "ckpt", tmp_path / "base", tokenizer=base_like_tokenizer_dir)  # the CLI's own run is above
    assert json.loads((tmp_path / "base" / "generation_config.json").read_text())["eos_token_id"] == [0, 2]
    # a checkpoint whose RoPE rotates part of each head has no Qwen3ForCausalLM form
    marker = json.loads((tmp_path / "ckpt" / "t3s.json").read_text())
    marker["shape"]["rotary_percent"] = 0.5
    (tmp_path / "ckpt" / "t3s.json").write_text(json.dumps(marker))
    with pytest.raises(T3SError, match=r"RoPE rotates 0.5 of each head \(model.rotary_percent\)"):
        export(tmp_path / "ckpt", tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
