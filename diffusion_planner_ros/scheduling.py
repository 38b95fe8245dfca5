"""Real-time scheduling of a node's threads on Linux (no ROS, no torch).

A robot's computer runs more than the planner. Under the normal scheduler, another process that
wants a whole core (a training job, a logger) takes turns with the executor threads that send
commands, and each turn can cost a control period. SCHED_FIFO threads run before every normal
thread as soon as they are ready, as ros2_control's controller manager runs its loop. Setting it
needs CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf) for the user.
"""

from __future__ import annotations

import os

# The highest SCHED_FIFO priority on Linux.
MAX_PRIORITY = 99


def set_realtime_priority(priority: int) -> str | None:
    """Run every thread of this process, and each it starts later, at SCHED_FIFO ``priority``.

    0 leaves the scheduling as it is. Returns None when done, else why it could not be done
    (no thread changed then).
    """
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            0 <= priority <= MAX_PRIORITY):
        raise ValueError(f'thread_priority must be an integer in 0..{MAX_PRIORITY}, '
                         f'got {priority!r}')
    if priority == 0:
        return None
    if not hasattr(os, 'sched_setscheduler') or not os.path.isdir('/proc/self/task'):
        return 'SCHED_FIFO is set per thread through Linux; this system has no /proc/self/task'
    param = os.sched_param(priority)
    for index, thread in enumerate(sorted(int(t) for t in os.listdir('/proc/self/task'))):
        try:
            os.sched_setscheduler(thread, os.SCHED_FIFO, param)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            if index:  # the first thread changed, so the rest may: not expected
                raise
            return (f'SCHED_FIFO priority {priority} is not permitted for this user: it needs '
                    'CAP_SYS_NICE or an rtprio limit of at least that (limits.conf)')
    return None


def rank_below_senders() -> int | None:
    """Run the calling (planning) thread one SCHED_FIFO priority below the node's other threads.

    A planning thread at the same SCHED_FIFO priority as the executor would hold its core until
    its plan ends; one below, the executor takes the core whenever a state or a timer wakes it.
    Returns the thread's new priority, or None when it is not on SCHED_FIFO (or at its lowest).
    """
    if not hasattr(os, 'sched_getscheduler'):
        return None
    try:
        if os.sched_getscheduler(0) != os.SCHED_FIFO:
            return None
        priority = os.sched_getparam(0).sched_priority
        if priority <= 1:
            return None
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority - 1))
    except OSError:
        return None
    return priority - 1
