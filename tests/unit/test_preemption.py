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
