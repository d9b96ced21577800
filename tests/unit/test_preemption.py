"""The train recipe's preemption handler catches SIGUSR1/SIGTERM while training and gives them back after."""

import os
import signal

from t3s_nemo.recipes.train import Preemption


def test_preemption_flags_the_signal_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    p = Preemption()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert p.requested
    p.close()  # in-process runs (`t3s pipeline`, `t3s demo`) must stay killable after the stage
    assert {s: signal.getsignal(s) for s in before} == before


WRITE_QUEUE_CHECK = r"""
import os, signal, sys, time
import psutil
from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
from t3s_nemo.checkpoint.manager import start_write_queue
before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
start_write_queue() if sys.argv[1] == "protected" else fa.get_write_results_queue()
assert {s: signal.getsignal(s) for s in before} == before, "handlers not given back"
children = psutil.Process().children()
assert children, "no Manager process"
for c in children:  # what Slurm does to every process of the step
    os.kill(c.pid, signal.SIGUSR1)
    os.kill(c.pid, signal.SIGTERM)
time.sleep(0.5)
q = fa.get_write_results_queue()
q.put("written")
print("QUEUE", q.get(timeout=10))
"""


def test_checkpoint_write_queue_survives_slurm_signals():
    """megatron's write-results Manager outlives the SIGUSR1/SIGTERM copies Slurm sends to every process
    of a step; unprotected, the same signals kill it and the next save fails (EOFError)."""
    import subprocess
    import sys

    def run(mode):
        return subprocess.run([sys.executable, "-c", WRITE_QUEUE_CHECK, mode], capture_output=True, text=True,
                              timeout=120)

    ok = run("protected")
    assert ok.returncode == 0 and "QUEUE written" in ok.stdout, ok.stderr[-2000:]
    unprotected = run("unprotected")  # the failure the protection exists for, so this test means something
    assert unprotected.returncode != 0 and "QUEUE written" not in unprotected.stdout


ORPHAN_CHECK = r"""
import os, sys, time
import psutil
from t3s_nemo.checkpoint.manager import start_write_queue
start_write_queue()
print("MANAGER", psutil.Process().children()[0].pid, flush=True)
time.sleep(600)
"""


def test_checkpoint_write_queue_ends_with_its_process():
    """The Manager ignores SIGTERM, so it must not outlive a training process killed outright: it exits
    once its parent is gone (a killed `t3s demo` left one behind that only kill -9 removed)."""
    import subprocess
    import sys

    import psutil

    p = subprocess.Popen([sys.executable, "-c", ORPHAN_CHECK], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("MANAGER"), line
        manager = psutil.Process(int(line.split()[1]))
        p.kill()
        p.wait(timeout=30)
        manager.wait(timeout=15)  # psutil.TimeoutExpired if it is still there
    finally:
        p.kill()
    assert not manager.is_running()


BARE_MAIN = r"""
import os, sys
with open(os.environ["IMPORT_LOG"], "a") as f:  # every import of this module, in any process
    f.write(f"{__name__} {os.getpid()} {os.environ.get('T3S_CPU_MODE')}\n")
if __name__ == "__main__":
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    from t3s_nemo.checkpoint.manager import start_write_queue
    start_write_queue()
    q = fa.get_write_results_queue()
    q.put("written")
    main = sys.modules["__main__"]
    print("QUEUE", q.get(timeout=10), main.__spec__.name, os.path.basename(main.__file__),
          os.environ.get("T3S_CPU_MODE"))
"""


def test_checkpoint_write_queue_does_not_rerun_the_recipe(tmp_path):
    """The spawned Manager used to import the parent's main module again (a recipe run with -m: torch,
    megatron-core, several seconds that every training process waited for) and install the CPU mode; it
    needs neither. The parent keeps its __main__ and T3S_CPU_MODE."""
    import subprocess
    import sys

    (tmp_path / "fake_recipe.py").write_text(BARE_MAIN)
    log = tmp_path / "imports.log"
    p = subprocess.run([sys.executable, "-m", "fake_recipe"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, IMPORT_LOG=str(log), T3S_CPU_MODE="1", T3S_NO_PROGRESS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "QUEUE written fake_recipe fake_recipe.py 1" in p.stdout
    lines = log.read_text().splitlines()  # the parent's own run only: no "__mp_main__" line from the Manager
    assert len(lines) == 1 and lines[0].startswith("__main__ ") and lines[0].endswith(" 1"), lines


SYNC_SAVE = r"""
import sys
import psutil
import torch
import torch.distributed as dist
import t3s_nemo  # noqa: F401  (the CPU mode, with T3S_CPU_MODE=1)
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor
from t3s_nemo.checkpoint.manager import start_write_queue

dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
start_write_queue(async_save=False)
dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", torch.arange(6.0))}, sys.argv[1])
print("CHILDREN", len(psutil.Process().children()))
loaded = dist_checkpointing.load({"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6))}, sys.argv[1])
assert torch.equal(loaded["w"], torch.arange(6.0)), loaded
start_write_queue(async_save=True)  # an async run later in the same process (the online driver) gets one
print("ASYNC_CHILDREN", len(psutil.Process().children()))
dist.destroy_process_group()
"""


def test_synchronous_saves_start_no_manager_process(tmp_path):
    """A synchronous save writes and reads its results in this process: no Manager is spawned for it (one
    per training process, which then imported torch's DCP to unpickle the results: seconds of CPU)."""
    import subprocess
    import sys

    (tmp_path / "ckpt").mkdir()
    p = subprocess.run([sys.executable, "-c", SYNC_SAVE, str(tmp_path / "ckpt"), str(tmp_path / "store")],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, T3S_CPU_MODE="1", T3S_NO_PROGRESS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    counts = dict(line.split() for line in p.stdout.splitlines() if "CHILDREN " in line)
    assert counts["CHILDREN"] == "0" and int(counts["ASYNC_CHILDREN"]) > 0, p.stdout  # the Manager (+ its tracker)
