"""torchrun for `t3s ... --nproc-per-node N`: torch.distributed.run, with a one-line error instead of its traceback.

    python -m t3s_nemo.launch [torchrun options] -m MODULE [args ...]

torchrun answers a failed worker with its own traceback (ChildFailedError) and an error table, on top of
the worker's message; for a user error (a bad config key) that buries the one line that matters. This
runs torchrun's own `run` and turns that failure into a line naming the first failed rank, exiting with
that rank's exit code (75 after a preemption checkpoint, so callers can requeue).
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun's default, set here so that it does not print a banner about it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the agent's per-worker log lines
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {-failure.exitcode}"
        print(f"error: {e.name}: rank {rank} of {args.nproc_per_node} ended with {how} (its message is above)",
              file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
