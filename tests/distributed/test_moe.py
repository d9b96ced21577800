"""The tiny MoE dLLM (`tiny_moe`: megatron-core MoE with a dense first layer, sigmoid group-limited
routing with an expert bias, a shared expert; SequentialMLP experts, allgather dispatcher, CPU/gloo):
trains from the CLI with falling loss and a logged load-balancing loss, expert parallelism EP=2
(torchrun, 2 gloo processes) gives the single process's per-step losses, and the aux loss reaches the
gradients with exactly its coefficient."""

import json
import math

import numpy as np
import pytest

from procs import TINY, run, run_script, t3s, train

# constant LR and no warm-up: the first 3 steps of the 8-step run are the 3-step EP=2 run's steps
STEPS = ("model.preset=tiny_moe", "model.objective=dllm", "train.global_batch_size=4", "train.micro_batch_size=1",
         "train.warmup_steps=0", "train.lr=3e-3", "train.lr_decay=constant", "train.log_interval=1")


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("moe") / "run"
    run([*t3s(), "sft", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}", "train.steps=8",
         "train.tensorboard=false", "checkpoint.snapshot_interval=100", *STEPS])  # snapshots: theta_0 and the end
    records = [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    return run_dir, records


def test_tiny_moe_dllm_trains_from_the_cli(single):
    run_dir, records = single
    assert [r["step"] for r in records] == list(range(1, 9))
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
    # megatron's load-balancing loss E * sum_i f_i P_i: 1 when balanced, at most E (4) when collapsed
    aux = [r["moe_aux_loss"] for r in records]
    assert all(0.9 < a < 2.0 for a in aux), aux
    marker = json.loads((run_dir / "checkpoints" / "iter_8" / "t3s.json").read_text())
    assert marker["preset"] == "tiny_moe" and marker["objective"] == "dllm"
    assert marker["shape"]["num_experts"] == 4 and marker["shape"]["first_k_dense"] == 1


def test_ep2_matches_single_process(single, tiny_data, tmp_path):
    """Two data-parallel replicas holding 2 of the 4 experts each: the tokens routed to the other
    rank's experts travel through the allgather dispatcher; the noise is the same at any DP size.
    Random init of the experts depends on the EP size (megatron draws each rank's local experts), so the
    EP=2 run starts from the single run's theta_0 snapshot, resharded by dist_checkpointing."""
    run_dir, ref = single
    records = train(tmp_path / "run", tiny_data, "train.steps=3", *STEPS, "parallel.ep=2",
                    f"model.init={run_dir / 'snapshots' / 'step_0'}", nproc=2)
    assert [r["step"] for r in records] == [1, 2, 3]
    for a, b in zip(records, ref[:3]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["masked_fraction"] == b["masked_fraction"]
        assert a["moe_aux_loss"] == pytest.approx(b["moe_aux_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def checks(tiny_data):
    """One subprocess: the tiny MoE dLLM's gradients at aux-loss coefficients 0, 0.1 and 0.2."""
    return run_script("moe_checks.py", tiny_data)


def test_aux_loss_reaches_the_gradients_with_its_coefficient(checks):
    r = checks
    # the router's gradient changes by exactly coeff x d(mean over micro-batches of the Switch loss)/dW,
    # computed by hand: the per-step scale undoes megatron's per-token-loss factor (positions / loss tokens)
    assert r["router_grad_change"] > 1e-4
    assert r["router_grad_change_vs_hand_rel"] < 1e-4
    assert r["router_grad_linear_in_coeff"] < 1e-4
    assert 0 < r["aux_scale"] < 1  # the dLLM loss counts response tokens only
    # it flows back into the layers below the router, never into the experts or the layers after
    assert r["upstream_grad_change"] > 0 and r["num_downstream_grads"] > 0 and r["downstream_grads_max_change"] == 0.0
    # the logged value is the loss before its coefficient; coefficient 0 records none
    assert r["aux_loss"] == pytest.approx(r["aux_by_hand"], rel=1e-5) and r["aux_loss_without_coeff"] == 0.0
    # aux-loss-free balancing: finalize_model_grads moved the expert bias by the update rate (1e-3)
    assert r["expert_bias_moved"] == pytest.approx(1e-3)
