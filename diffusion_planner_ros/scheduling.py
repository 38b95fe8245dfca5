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


def thread_ids() -> set[int]:
    """Return the ids of this process's threads now (Linux; empty elsewhere)."""
    try:
        return {int(thread) for thread in os.listdir('/proc/self/task')}
    except OSError:
        return set()


def set_realtime_priority(priority: int) -> str | None:
    """Run every thread of this process, and each it starts later, at SCHED_FIFO ``priority``.

    0 leaves the scheduling as it is. Returns None when done, else why it could not be done
    (every thread is then on the scheduler it had).
    """
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            0 <= priority <= MAX_PRIORITY):
        raise ValueError(f'thread_priority must be an integer in 0..{MAX_PRIORITY}, '
                         f'got {priority!r}')
    if priority == 0:
        return None
    threads = thread_ids()
    if not hasattr(os, 'sched_setscheduler') or not threads:
        return 'SCHED_FIFO is set per thread through Linux; this system has no /proc/self/task'
    changed = []
    for thread in sorted(threads):
        try:
            before = (os.sched_getscheduler(thread), os.sched_getparam(thread))
            os.sched_setscheduler(thread, os.SCHED_FIFO, os.sched_param(priority))
            changed.append((thread, before))
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            for done, (policy, param) in changed:
                os.sched_setscheduler(done, policy, param)
            return (f'SCHED_FIFO priority {priority} is not permitted: it needs CAP_SYS_NICE '
                    'or an rtprio limit of at least that for the user (limits.conf), and in a '
                    'container with real-time group scheduling, real-time runtime for it')
    return None


def rank_planning_threads(senders: set[int] | None = None) -> int | None:
    """Run this process's planning threads one SCHED_FIFO priority below the calling thread.

    ``senders``: the threads that send commands, taken with thread_ids() before the planner
    started any (its planning thread, ONNX Runtime's and torch's pools); every other thread of
    the process counts as planning, except Fast DDS's (``dds.*``), which carry the messages.
    None: every thread is a planning thread (a planning process). A plan at the executor's
    priority would hold its core until it ends; one below, the executor takes the core whenever
    a state or a timer wakes it. At priority 1 the planning threads go to the normal scheduler.
    Returns their new priority (0: the normal scheduler), or None where the calling thread is
    not on SCHED_FIFO (nothing changes).
    """
    if not hasattr(os, 'sched_getscheduler') or os.sched_getscheduler(0) != os.SCHED_FIFO:
        return None
    priority = os.sched_getparam(0).sched_priority - 1
    policy = os.SCHED_FIFO if priority > 0 else os.SCHED_OTHER
    for thread in thread_ids() - (senders or set()):
        if senders is not None and _name(thread).startswith('dds.'):
            continue
        try:
            os.sched_setscheduler(thread, policy, os.sched_param(priority))
        except ProcessLookupError:
            continue
    return priority


def _name(thread: int) -> str:
    try:
        with open(f'/proc/self/task/{thread}/comm') as comm:
            return comm.read().strip()
    except OSError:
        return ''
