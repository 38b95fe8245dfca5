"""The standard main() of both nodes, with a safe stop on SIGINT and SIGTERM.

rclpy's own signal handler shuts the context down before our code runs, and then nothing can be
published. We take the signals ourselves, so a node can command zero while its context is still
valid, then destroy the node and shut down. The handler only sets a flag: raising from it could
land inside a pybind11 call of the executor and surface as an unrelated RuntimeError.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from typing import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

# How long a stopping node waits for its last message (the zero command, the state that shows
# it) to be acknowledged before it destroys the publisher.
LAST_MESSAGE_ACK_S = 1.0
# The signal on which a node prints every thread's stack to stderr (and goes on).
DUMP_STACKS_SIGNAL = signal.SIGUSR1


def spin_node(factory: Callable, args=None) -> None:
    """Create the node, spin it on a SingleThreadedExecutor, stop it safely.

    A node that cannot start (a parameter out of range or of the wrong type, a bad bundle or
    profile) prints one line that names the problem and exits with status 2.
    """
    stop = threading.Event()
    # A supervisor about to kill a node that does not stop asks first where it hangs.
    faulthandler.register(DUMP_STACKS_SIGNAL, all_threads=True)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    node = None
    try:
        try:
            node = factory()
        except (ParameterException, ValueError, OSError) as error:
            print(f'cannot start: {error}', file=sys.stderr)
            rclpy.try_shutdown()
            sys.exit(2)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
