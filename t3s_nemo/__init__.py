"""T3S (Training-Trajectory-Aware Token Selection) on megatron-core."""

import os

__version__ = "0.1.0"

# Worker processes that megatron-core starts (checkpoint writers, spawned data workers) import this
# package before anything else runs in them; the recipe that enabled the CPU mode marks it in the
# environment so those children get it too.
if os.environ.get("T3S_CPU_MODE") == "1":
    from t3s_nemo.devices import install_cpu_mode

    install_cpu_mode()
