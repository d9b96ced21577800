"""Initializer of the checkpoint write-results Manager process (checkpoint.manager.start_write_queue).

Its own module, importing nothing heavy: the spawned Manager process imports it before it serves.
"""

import os
import signal
import threading
import time


def guard(parent: int) -> None:
    """Ignore Slurm's SIGUSR1/SIGTERM copies, and exit once the training process `parent` is gone."""
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)  # the training process was killed, or exited without shutting the Manager down

    threading.Thread(target=watch, name="t3s-parent-watch", daemon=True).start()
