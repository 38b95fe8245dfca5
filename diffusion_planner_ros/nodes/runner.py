"""The standard main() of both nodes, with a safe stop on SIGINT and SIGTERM.

rclpy's own signal handler shuts the context down before our code runs, and then nothing can be
published. We take the signals ourselves, so a node can command zero while its context is still
valid, then destroy the node and shut down.
"""

from __future__ import annotations

import signal
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def spin_node(factory: Callable, args=None) -> None:
    """Create the node, spin it on a SingleThreadedExecutor, stop it safely."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
