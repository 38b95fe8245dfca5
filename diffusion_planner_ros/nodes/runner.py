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

from rcl_interfaces.msg import IntegerRange, ParameterDescriptor
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from diffusion_planner_ros.scheduling import MAX_PRIORITY, set_realtime_priority

try:  # rclpy 7.1.4 (Jazzy) and later; not in Humble
    from rclpy.experimental.events_executor import EventsExecutor
except ImportError:
    EventsExecutor = None

# How long a stopping node waits for its last message (the zero command, the state that shows
# it) to be acknowledged before it destroys the publisher.
LAST_MESSAGE_ACK_S = 1.0
# The signal on which a node prints every thread's stack to stderr (and goes on).
DUMP_STACKS_SIGNAL = signal.SIGUSR1
# The executors a node can spin on, by the value of its `executor` parameter (None: this rclpy
# has none).
EXECUTORS = {'single': SingleThreadedExecutor, 'events': EventsExecutor}


def declare_executor(node) -> str:
    """Declare a node's read-only `executor` parameter; return its value once it is checked.

    'single' is rclpy's SingleThreadedExecutor, which builds each wait in Python. 'events' is
    rclpy's EventsExecutor (C++; experimental in rclpy, in Jazzy's 7.1.4 and later), which runs
    the callbacks in the order their events arrived, with less work between them. On rclpy
    7.1.6 it fails on a subscription callback that takes a MessageInfo, so a node on it
    subscribes with the message alone (subscribe_with_info) and counts a message's age from
    its callback, not from its arrival in DDS: a stall of the node's executor then makes a
    backlog look fresh.
    """
    kind = node.declare_parameter('executor', 'single', ParameterDescriptor(
        description='single (SingleThreadedExecutor) or events (EventsExecutor)',
        read_only=True)).value
    if kind not in EXECUTORS:
        raise ValueError(f'executor {kind!r} is not one of {", ".join(EXECUTORS)}')
    if EXECUTORS[kind] is None:
        raise ValueError("executor 'events' needs rclpy 7.1.4 or later (ROS 2 Jazzy); this "
                         'rclpy has no EventsExecutor: set executor:=single')
    return kind


def declare_thread_priority(node) -> int:
    """Declare a node's read-only `thread_priority` parameter and apply it; return its value.

    0 (the default) leaves the node on the normal scheduler. 1-99 runs every thread of the node
    (the executor's, DDS's; the planner's one lower) at that SCHED_FIFO priority, so
    other work on the computer cannot hold a core the node needs. Where the user may not set
    it, the node says so and runs on as before. Call it first in the node's constructor, so the
    threads the node starts afterwards inherit it.
    """
    priority = node.declare_parameter('thread_priority', 0, ParameterDescriptor(
        description='SCHED_FIFO priority of the node\'s threads (Linux; needs CAP_SYS_NICE or '
                    'an rtprio limit); 0 = the normal scheduler',
        read_only=True,
        integer_range=[IntegerRange(from_value=0, to_value=MAX_PRIORITY, step=1)])).value
    problem = set_realtime_priority(priority)
    if problem:
        node.get_logger().warning(f'{problem}; running on the normal scheduler')
    elif priority:
        node.get_logger().info(f'threads at SCHED_FIFO priority {priority}')
    return priority


def subscribe_with_info(node, msg_type, topic: str, callback: Callable, qos):
    """Subscribe callback(msg, info); info is None on the events executor (see above)."""
    if node.get_parameter('executor').value == 'events':
        return node.create_subscription(msg_type, topic, lambda msg: callback(msg, None), qos)
    return node.create_subscription(msg_type, topic, callback, qos)


def spin_node(factory: Callable, args=None) -> None:
    """Create the node, spin it on the executor its `executor` parameter names, stop it safely.

    A node that cannot start (a parameter out of range or of the wrong type, a bad bundle or
    profile, an executor this rclpy lacks) prints one line that names the problem and exits
    with status 2. Every node declares `executor` (declare_executor).
    """
    stop = threading.Event()
    # A supervisor about to kill a node that does not stop asks first where it hangs.
    faulthandler.register(DUMP_STACKS_SIGNAL, all_threads=True)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    node = executor = None
    try:
        try:
            node = factory()
        except (ParameterException, ValueError, OSError) as error:
            print(f'cannot start: {error}', file=sys.stderr)
            rclpy.try_shutdown()
            sys.exit(2)
        executor = EXECUTORS[node.get_parameter('executor').value]()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            if executor is not None:
                executor.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
