"""megatron-core's checkpoint write-results queue: in this process for synchronous saves, else in a
Manager process that survives Slurm's signals (start_write_queue), and that Manager's initializer (guard).

Its own module, importing nothing heavy: the spawned Manager process imports it before it serves.
"""

import contextlib
import os
import queue
import signal
import sys
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


def start_write_queue(async_save: bool = True) -> None:
    """Start megatron's checkpoint write-results queue now: with async_save, in a Manager process that
    ignores SIGUSR1 and SIGTERM and exits when this process is gone; without, an in-process queue.

    megatron-core's writer sends results through a multiprocessing Manager it spawns on the first save
    (filesystem_async.get_write_results_queue). A spawned process takes the default action for those
    signals, which is to die, while Slurm delivers them to every process of the job step, more than once
    (`scancel --full --signal=USR1` signals the step and srun forwards the batch shell's copy). A late copy
    killed the Manager of the very checkpoint the signal asked for (EOFError in every rank; the preemption
    test caught it under load), or an earlier Manager of async snapshots mid-run.

    Ignoring the signals means the Manager no longer dies with a job that is killed outright (SIGTERM
    with no handler, SIGKILL): multiprocessing shuts it down only at a normal exit. So its process also
    watches its parent and exits once it is gone. Why not megatron's function: it creates the Manager
    with no initializer; this one sets its module's queue (`_results_queue`), which megatron then uses.

    A synchronous save writes in this process (megatron's execute_sync runs the writer's threads here and
    then reads the results back), so a queue.Queue carries them as well as a Manager's queue. The Manager
    would be one more spawned process per training process, and its first result makes it import
    torch.distributed.checkpoint to unpickle the write results: 4-8 s of CPU per run on 2 cores, for
    nothing. A process that saved synchronously and then starts an async run (the online driver runs its
    phases in one process) gets the Manager then: a sync save leaves nothing in the queue.
    """
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    except ImportError:  # a megatron-core without the shared queue: nothing to protect
        return
    if not hasattr(fa, "_results_queue"):
        return
    current = fa._results_queue
    if not async_save:
        if current is None:
            fa._results_queue = queue.Queue()
        return
    if current is not None and not isinstance(current, queue.Queue):
        return  # the Manager's queue is up already
    manager = SyncManager(ctx=mp.get_context("spawn"))
    with _spawn_bare():
        manager.start(initializer=guard, initargs=(os.getpid(),))
    fa._results_queue = manager.Queue()


@contextlib.contextmanager
def _spawn_bare():
    """Start a spawned process without the parent's __main__ module and without the CPU mode.

    spawn re-runs the parent's main module in the child (for a recipe: torch, megatron-core and
    torch.distributed.checkpoint, 5-10 s of a 2-core CPU), and `import t3s_nemo` installs the CPU mode when
    T3S_CPU_MODE=1 is set. The Manager serves a queue and needs neither, and the parent waited on that
    import in every training process at start-up. multiprocessing decides what the child re-runs from
    __main__.__spec__ and __main__.__file__ when the process starts (spawn.get_preparation_data), so they are
    hidden only for that moment."""
    main = sys.modules["__main__"]
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if hasattr(main, k)}
    cpu_mode = os.environ.pop("T3S_CPU_MODE", None)
    try:
        main.__spec__ = None
        if "__file__" in saved:
            del main.__file__
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)
        if cpu_mode is not None:
            os.environ["T3S_CPU_MODE"] = cpu_mode
