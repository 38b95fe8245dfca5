"""When a message reached this process, as opposed to when its callback got to run."""

from __future__ import annotations

import time


def arrival(info: dict | None) -> float:
    """Return the ``time.monotonic()`` at which the middleware received a message.

    ``info`` is the MessageInfo rclpy passes to a two-argument subscription callback; its
    ``received_timestamp`` (ns, system clock) is stamped by DDS on reception. A node whose
    executor fell behind handles a backlog late: the age of a command or state must count from
    its arrival, or a stalled node would take an old message for a fresh one. Where the
    middleware gives no reception time, or the system clock stepped back, it is now.
    """
    now_wall, now = time.time(), time.monotonic()
    received_ns = (info or {}).get('received_timestamp') or 0
    if received_ns <= 0:
        return now
    return now - max(now_wall - received_ns * 1e-9, 0.0)


def sent(info: dict) -> float:
    """Return when the publisher sent a message: its DDS source timestamp, in system-clock s.

    The sender's clock, so it is comparable with ``time.time()`` only on one machine.
    """
    return info['source_timestamp'] * 1e-9
