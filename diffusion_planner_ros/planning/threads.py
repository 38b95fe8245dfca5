"""Thread settings for planning next to a ROS executor (no ROS)."""

from __future__ import annotations

import os
import sys
import threading

import torch


# Python hands the GIL to a waiting thread only every switch interval (5 ms by default). With a
# planning thread and an executor thread in one process, a thread woken by a state or a timer
# can wait that long; 0.5 ms bounds that wait at a small cost in switching.
GIL_SWITCH_INTERVAL_S = 5e-4


def configure_threads(torch_threads: int,
                      switch_interval_s: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Process-wide thread settings for planning next to a ROS executor.

    torch_threads > 0 sets torch's intra-op threads (0 keeps torch's default, one per core).
    """
    if torch_threads < 0:
        raise ValueError(f'torch_threads must be >= 0, got {torch_threads}')
    if torch_threads:
        torch.set_num_threads(torch_threads)
    sys.setswitchinterval(switch_interval_s)


def lower_thread_priority(nice: int) -> int | None:
    """Raise the calling thread's nice value by ``nice``; return it (None: not supported).

    Linux schedules each thread on its own, so a planning thread at a higher nice value gives
    the CPU to the threads that send commands (the executor) and to other processes on the
    robot whenever they are ready. Raising a nice value needs no privileges.
    """
    if nice < 0:
        raise ValueError(f'nice must be >= 0, got {nice}')
    try:
        thread = threading.get_native_id()
        value = min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice)
        os.setpriority(os.PRIO_PROCESS, thread, value)
    except (AttributeError, OSError):
        return None
    return value
