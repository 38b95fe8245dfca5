"""Fault drills and the soak run of the sim graph (bridge + planner from the launch file).

- Fault drill (real time): SIGKILL the bridge mid-episode and time the planner's first zero
  command; restart the bridge and time the planner's first plan command after the new bridge's
  first state; SIGKILL the planner and time until the bridge applies zero (joint_states effort).
- Soak (lockstep): run episodes for a number of control steps, sampling the nodes' resident
  memory and recording every plan's latency (``~/plan_latency_ms``).

fault_drill.py and soak.py beside it are the command lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray

from diffusion_planner_ros.launch_file import read_launch_file
from diffusion_planner_ros.nodes.demo.client import DemoClient, spin_until
from diffusion_planner_ros.nodes.demo.sim_graph import _bridge_seed, start_nodes, stop_nodes
from diffusion_planner_ros.nodes.timing import sent
from diffusion_planner_ros.robots import load_profile

# Deep enough for a minute of 100 Hz states: a watcher that stalls (a slow kill, the CPU busy
# elsewhere) loses none of the messages it times.
RELIABLE = QoSProfile(depth=6000, reliability=ReliabilityPolicy.RELIABLE)


class GraphWatcher(Node):
    """Records the commands, the states (with the bridge's applied effort) and plan latencies.

    Commands and states are stamped with the time their publisher sent them (DDS source
    timestamp, system clock, as ``time.time()``), not the time this node got round to them: a
    watcher that falls behind must not stretch the figures it times.

    With ``relay_goals`` it also forwards each episode goal of the bridge (latched on
    /episode_goal) to the planner's /goal_pose once the planner listens, as a user's goal
    source would; a restarted bridge's goal is forwarded too.
    """

    def __init__(self, state_topic: str, command_topic: str, relay_goals: bool = False):
        super().__init__('graph_watcher')
        self.commands: list[tuple[float, np.ndarray]] = []  # (sent, command)
        self.states: list[tuple[float, np.ndarray, float]] = []  # (sent, effort, sim time)
        self.largest_lag_s = 0.0                            # sent -> handled here
        self.latencies: list[tuple[int, float]] = []        # (states seen, plan ms)
        self.create_subscription(Float64MultiArray, command_topic, self._on_command, RELIABLE)
        self.create_subscription(JointState, state_topic, self._on_state, RELIABLE)
        self.create_subscription(Float64, '/planner_node/plan_latency_ms', self._on_latency,
                                 RELIABLE)
        self.keep_messages = True
        self.state_count = 0
        if relay_goals:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self._goal_pub = self.create_publisher(PoseStamped, '/goal_pose', 10)
            self.create_subscription(PoseStamped, '/episode_goal', self._on_episode_goal,
                                     latched)
            self.create_timer(0.1, self._forward_goal)
        self._pending_goal = None
        self._matched_since = None

    def _on_episode_goal(self, msg: PoseStamped) -> None:
        self._pending_goal = msg

    def _forward_goal(self) -> None:
        if self._goal_pub.get_subscription_count() == 0:
            self._matched_since = None
            return
        now = time.monotonic()
        self._matched_since = self._matched_since or now
        # Matched here does not mean matched there yet: give discovery a moment.
        if self._pending_goal is not None and now - self._matched_since > 0.5:
            self._goal_pub.publish(self._pending_goal)
            self._pending_goal = None

    def _sent(self, info: dict) -> float:
        when = sent(info)
        self.largest_lag_s = max(self.largest_lag_s, time.time() - when)
        return when

    def _on_command(self, msg: Float64MultiArray, info: dict) -> None:
        if self.keep_messages:
            self.commands.append((self._sent(info), np.asarray(msg.data, dtype=np.float64)))

    def _on_state(self, msg: JointState, info: dict) -> None:
        self.state_count += 1
        if self.keep_messages:
            self.states.append((self._sent(info), np.asarray(msg.effort, dtype=np.float64),
                                msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def _on_latency(self, msg: Float64) -> None:
        self.latencies.append((self.state_count, float(msg.data)))

    def first_command(self, after: float, zero: bool) -> float | None:
        """Time of the first (zero or non-zero) command received after ``after``."""
        for stamp, command in self.commands:
            if stamp > after and bool(np.all(command == 0.0)) == zero:
                return stamp
        return None

    def last_before(self, messages: list, moment: float) -> tuple:
        """Return the last of ``messages`` (commands or states) sent before ``moment``."""
        return [message for message in messages if message[0] < moment][-1]

    def states_between(self, start: float, end: float | None) -> list:
        """States sent from ``start`` to ``end`` (none if ``end`` is None)."""
        return [state for state in self.states if end is not None and start <= state[0] <= end]

    def largest_state_gap(self, start: float, end: float | None) -> float | None:
        """Longest wait between consecutive states sent from ``start`` to ``end``."""
        sent = [state[0] for state in self.states_between(start, end)]
        return float(np.max(np.diff(sent))) if len(sent) > 1 else None

    def sim_seconds(self, start: float, end: float | None) -> float | None:
        """Sim time the bridge advanced from its last state sent by ``start`` to ``end``'s."""
        before = [state for state in self.states if state[0] <= start]
        window = self.states_between(start, end)
        if not before or not window or window[-1][0] != end:
            return None
        return window[-1][2] - before[-1][2]

    def states_missing(self, start: float, end: float | None) -> int | None:
        """States the bridge stepped from ``start`` to ``end`` (send times) that never came.

        Consecutive steps are one env step (the median sim-stamp difference) apart.
        """
        sims = [state[2] for state in self.states_between(start, end)]
        if len(sims) < 2:
            return None
        step = float(np.median(np.diff([state[2] for state in self.states])))
        return int(round((sims[-1] - sims[0]) / step)) + 1 - len(sims)

    def last_moving_state(self, before: float | None) -> float | None:
        """Send time of the last state with non-zero effort sent before ``before``."""
        moving = [t for t, effort, _ in self.states
                  if before is not None and t < before and np.any(effort != 0.0)]
        return moving[-1] if moving else None

    def first_state(self, after: float, zero_effort: bool | None = None) -> float | None:
        """Time of the first state after ``after`` (with all-zero effort, if asked)."""
        for stamp, effort, _ in self.states:
            if stamp > after and (zero_effort is None
                                  or bool(np.all(effort == 0.0)) == zero_effort):
                return stamp
        return None


@dataclass
class Graph:
    """The launch file's node specs and the running processes, by node name."""

    launch_args: dict
    specs: dict
    processes: dict

    def start(self, name: str, extra: dict) -> None:
        """Start (or restart) one node."""
        self.processes[name] = start_nodes([self.specs[name]], {name: extra.get(name, {})})[0]

    def kill(self, name: str) -> float:
        """SIGKILL a node (no safe stop: a crash); returns when (``time.time()``) it was sent."""
        sent = time.time()
        self.processes[name].kill()
        self.processes[name].wait()
        return sent

    def stop(self) -> list[int]:
        """SIGINT what still runs, as sim_graph does."""
        return stop_nodes([p for p in self.processes.values() if p.poll() is None])


def open_graph(share: Path, overrides: dict, extra: dict) -> Graph:
    """Start bridge and planner as the launch file does, with extra parameters."""
    launch_args, specs = read_launch_file(share / 'launch' / 'sim.launch.py', share, overrides)
    by_name = {spec.name: spec for spec in specs if spec.enabled and spec.name in (
        'sim_bridge_node', 'planner_node')}
    graph = Graph(launch_args, by_name, {})
    for name in by_name:
        graph.start(name, extra)
    return graph


def _seconds(end: float | None, start: float) -> float | None:
    return None if end is None else end - start


def run_fault_drill(share: Path, overrides: dict, drive_s: float = 2.0) -> dict:
    """Kill the bridge, restart it, kill the planner; the timings of what the survivor did.

    Real time, the params file's timeouts. The watcher forwards the bridge's episode goal to
    the planner, so it drives without a client. Times are system clock (``time.time()``), the
    clock of the messages' source timestamps.
    """
    extra = {'planner_node': {'lockstep': 'false'},
             'sim_bridge_node': {'lockstep': 'false', 'episode_steps': 0}}
    graph = open_graph(share, overrides, extra)
    rclpy.init()
    watcher = GraphWatcher(graph.launch_args['state_topic'], graph.launch_args['command_topic'],
                           relay_goals=True)
    executor = SingleThreadedExecutor()
    executor.add_node(watcher)
    result: dict = {}
    try:
        started = time.time()
        if not spin_until(executor, lambda: watcher.first_command(started, zero=False), 120.0):
            raise RuntimeError('the planner never commanded: graph did not come up')
        spin_until(executor, lambda: False, drive_s)

        # 1. The bridge dies: the planner must command zero once its state is stale.
        killed = graph.kill('sim_bridge_node')
        kill_waits = [time.time() - killed]
        spin_until(executor, lambda: watcher.first_command(killed, zero=True), 5.0)
        zero = watcher.first_command(killed, zero=True)
        spin_until(executor, lambda: False, 1.0)
        last_state = watcher.last_before(watcher.states, killed)[0]
        after_zero = [c for t, c in watcher.commands if zero is not None and t >= zero]
        result['bridge_killed'] = {
            'zero_after_kill_s': _seconds(zero, killed),
            'zero_after_last_state_s': _seconds(zero, last_state),
            'zero_held': bool(after_zero) and all(np.all(c == 0.0) for c in after_zero),
        }

        # 2. The bridge comes back: the planner must plan again from its first fresh state.
        restarted = time.time()
        graph.start('sim_bridge_node', extra)
        spin_until(executor, lambda: watcher.first_state(restarted), 120.0)
        fresh = watcher.first_state(restarted)
        if fresh is not None:
            spin_until(executor, lambda: watcher.first_command(fresh, zero=False), 10.0)
        resumed = None if fresh is None else watcher.first_command(fresh, zero=False)
        result['bridge_restarted'] = {
            'bridge_start_s': _seconds(fresh, restarted),
            'resume_after_fresh_state_s': _seconds(resumed, fresh or 0.0),
        }
        spin_until(executor, lambda: False, drive_s)

        # 3. The planner dies: the bridge must apply zero after command_timeout_s. It is
        # killed while the bridge applies one of its commands (a plan that ran late under
        # load leaves a zero in force for a moment; killing then would test nothing).
        moving_at_kill = spin_until(
            executor, lambda: bool(watcher.states) and np.any(watcher.states[-1][1] != 0.0),
            10.0)
        killed = graph.kill('planner_node')
        kill_waits.append(time.time() - killed)
        spin_until(executor, lambda: watcher.first_state(killed, zero_effort=True), 5.0)
        applied_zero = watcher.first_state(killed, zero_effort=True)
        # The planner's last command: a kill that takes effect late lets it send a few more.
        last_command = watcher.last_before(
            watcher.commands, killed if applied_zero is None else applied_zero)[0]
        moving = watcher.last_before(watcher.states, killed)[1]
        result['planner_killed'] = {
            'effort_before_kill': moving.tolist(),
            'moving_at_kill': bool(moving_at_kill),
            'zero_applied_after_kill_s': _seconds(applied_zero, killed),
            'zero_applied_after_last_command_s': _seconds(applied_zero, last_command),
            # How long the bridge kept applying the dead planner's command, as far as the
            # states that arrived show (a lower bound if some were lost on the way).
            'command_applied_after_last_command_s': _seconds(
                watcher.last_moving_state(applied_zero), last_command),
            # The first two figures are exact only if no state between the last command and
            # the zero was lost on its way here.
            'states_missing': watcher.states_missing(last_command, applied_zero),
            # Where a late zero would come from: a silent planner before the kill, or a
            # stalled bridge (a gap between the states it sent; sim time stands still).
            'last_command_before_kill_s': killed - last_command,   # < 0: sent after it
            'commands_after_kill': sum(sent > killed for sent, _ in watcher.commands),
            'largest_state_gap_s': watcher.largest_state_gap(last_command, applied_zero),
            'zero_applied_after_last_command_sim_s': watcher.sim_seconds(last_command,
                                                                         applied_zero),
        }
        result['watcher_largest_lag_s'] = watcher.largest_lag_s
        result['kill_waits_s'] = kill_waits
        result['commands'] = len(watcher.commands)
        result['commands_finite_in_limits'] = bool(all(
            np.all(np.isfinite(c)) and np.all(np.abs(c) <= 1.0) for _, c in watcher.commands))
    finally:
        watcher.destroy_node()
        rclpy.try_shutdown()
        result['exit_codes'] = graph.stop()
    return result


def _rss_mib(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no VmRSS for process {pid}')


def run_soak(share: Path, overrides: dict, steps: int, episode_steps: int,
             sample_every_s: float = 2.0, progress=print) -> dict:
    """Lockstep episodes until ``steps`` states; memory samples and every plan's latency."""
    extra = {'planner_node': {'lockstep': 'true'},
             'sim_bridge_node': {'lockstep': 'true', 'episode_steps': episode_steps}}
    graph = open_graph(share, overrides, extra)
    args = graph.launch_args
    rclpy.init()
    profile = load_profile(args['profile'])
    client = DemoClient(profile, _bridge_seed(graph.specs['sim_bridge_node']),
                        state_topic=args['state_topic'], command_topic=args['command_topic'])
    watcher = GraphWatcher(args['state_topic'], args['command_topic'])
    watcher.keep_messages = False
    memory: list[dict] = []

    def sample() -> None:
        memory.append({'states': watcher.state_count, 'time_s': time.monotonic() - started,
                       **{name: _rss_mib(process.pid)
                          for name, process in graph.processes.items()}})

    executor = SingleThreadedExecutor()
    executor.add_node(client)
    executor.add_node(watcher)
    records = []
    started = time.monotonic()
    watcher.create_timer(sample_every_s, sample)
    try:
        client.wait_for_graph(executor, args['command_topic'])
        started = time.monotonic()
        watcher.state_count = 0
        episode = 0
        while watcher.state_count < steps:
            episode += 1
            records.append(client.run_episode(executor, episode, episode_steps, 120.0))
            if episode % 20 == 0:
                progress(f'soak: {watcher.state_count} states, episode {episode}, '
                         f'{time.monotonic() - started:.0f} s')
        sample()
    finally:
        client.destroy_node()
        watcher.destroy_node()
        rclpy.try_shutdown()
        codes = graph.stop()
    return soak_summary(memory, watcher.latencies, records, steps, codes,
                        time.monotonic() - started)


def soak_summary(memory: list[dict], latencies: list[tuple[int, float]], records: list,
                 steps: int, exit_codes: list[int], duration_s: float) -> dict:
    """Memory growth after warm-up (the first tenth) and plan latency, first vs last tenth."""
    total = memory[-1]['states']
    tenth = total / 10.0
    nodes = [key for key in memory[0] if key not in ('states', 'time_s')]
    growth = {}
    for name in nodes:
        warm = [m[name] for m in memory if m['states'] <= tenth][-1:] or [memory[0][name]]
        after = [m[name] for m in memory if m['states'] > tenth]
        growth[name] = {'rss_after_warm_up_mib': warm[0], 'rss_max_after_mib': max(after),
                        'rss_end_mib': memory[-1][name],
                        'growth': max(after) / warm[0] - 1.0}
    first = [ms for count, ms in latencies if count <= tenth]
    last = [ms for count, ms in latencies if count > total - tenth]
    p99_first, p99_last = float(np.percentile(first, 99)), float(np.percentile(last, 99))
    return {
        'steps': int(total), 'steps_asked': steps, 'duration_s': duration_s,
        'episodes': len(records),
        'success_rate': float(np.mean([r.success for r in records])),
        'memory': growth,
        'plans': len(latencies),
        'plan_latency': {
            'first_tenth': {'plans': len(first), 'p50_ms': float(np.median(first)),
                            'p99_ms': p99_first},
            'last_tenth': {'plans': len(last), 'p50_ms': float(np.median(last)),
                           'p99_ms': p99_last},
            'p99_change': p99_last / p99_first - 1.0,
        },
        'memory_samples': memory,
        'exit_codes': exit_codes,
    }
