"""The demo client: drives episodes of the sim graph over ROS and measures them.

For each episode it sends the episode's random goal on goal_pose (goal envs: the maze), asks the
bridge for a new episode (~/reset) and follows it until the bridge's ``episode_end`` or the
step limit: the return is the sum of the bridge's ``reward`` messages (the env's own rewards);
success is reaching the goal (within 0.45 m) in a goal env, not falling (no termination) in a
locomotion env. The goal comes from the env's own seeded reset, the same one the bridge makes,
so a lockstep run sees the same episodes as training/evaluate.py. That reset also tells the
client where the episode starts: the first state equal to its reset state, so no message of the
old episode counts for the new one however late this client takes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from diffusion_planner_ros.envs import is_goal_env, make_env, split_observation
from diffusion_planner_ros.nodes.timing import sent
from diffusion_planner_ros.robots import RobotProfile

GOAL_RADIUS = 0.45
# Messages an episode's subscriptions hold: a client starved of CPU (the real-time benchmark
# runs it at SCHED_IDLE) takes them late, and must not lose a reward or a state meanwhile.
QUEUE = 5000
# A state equal to the episode's reset state within this (joint units) is that state: the bridge
# sends the env's own float64 values, so the match is to rounding.
START_ATOL = 1e-9


def spin_until(executor, done, timeout_s: float, step_s: float = 0.005) -> bool:
    """Spin ``executor`` until ``done()`` or ``timeout_s``; returns ``done()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        executor.spin_once(timeout_sec=step_s)
    return done()


@dataclass
class EpisodeRecord:
    """What one episode over ROS produced."""

    seed: int
    goal: list | None
    start: np.ndarray                # the reset state (observation without the goal)
    started: bool = False            # the reset state has arrived: this episode's messages
    states: int = 0
    rewards: list = field(default_factory=list)
    end: str = ''  # the bridge's episode_end reason
    success: bool = False
    timed_out: bool = False
    # Per state counted: (its stamp, the command the step before it applied, by actuator, from
    # the state's effort; None where the state carries none). The first is the reset state.
    applied: list = field(default_factory=list)

    @property
    def episode_return(self) -> float:
        """Return the sum of the episode's rewards."""
        return float(sum(self.rewards))


@dataclass
class DemoReport:
    """All episodes plus the planner's last diagnostics."""

    episodes: list = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)


class DemoClient(Node):
    """Sends goals, resets episodes, watches states."""

    def __init__(self, profile: RobotProfile, seed: int,
                 reset_service: str = '/sim_bridge_node/reset',
                 state_topic: str = '/joint_states', goal_topic: str = '/goal_pose',
                 command_topic: str = '/effort_controller/commands',
                 reward_topic: str = '/reward', end_topic: str = '/episode_end'):
        super().__init__('demo_client')
        self.profile, self.seed, self.state_topic = profile, seed, state_topic
        self.env = make_env(profile.env_id)
        self.goal_pub = self.create_publisher(PoseStamped, goal_topic, 10)
        self.reset_client = self.create_client(Trigger, reset_service)
        self.create_subscription(JointState, state_topic, self._on_state, QUEUE)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.create_subscription(Float64MultiArray, command_topic, self._on_command, QUEUE)
        reliable = QoSProfile(depth=QUEUE, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Float64, reward_topic, self._on_reward, reliable)
        self.create_subscription(String, end_topic, self._on_end, reliable)
        self.command_times: list[float] = []
        self._record: EpisodeRecord | None = None
        self._goal, self._steps = None, 0
        self._bridge_ended = False  # the bridge's first episode ended before the first reset
        self.diagnostics: dict = {}

    def _on_state(self, msg: JointState) -> None:
        record = self._record
        if record is None:
            return
        try:
            observation = self.profile.observation_from_joint_state(
                msg.name, msg.position, msg.velocity)
        except ValueError:
            return
        if not record.started:
            # States before the episode's reset state belong to the old episode.
            if not np.allclose(observation, record.start, rtol=0, atol=START_ATOL):
                return
            record.started = True
        if self._goal is not None:
            record.success |= bool(np.linalg.norm(observation[:2] - self._goal) <= GOAL_RADIUS)
        record.states += 1
        effort = dict(zip(msg.name, msg.effort)) if len(msg.effort) == len(msg.name) else {}
        applied = tuple(float(effort[name]) for name in self.profile.actuators
                        if name in effort)
        record.applied.append((msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec,
                               applied if len(applied) == len(self.profile.actuators)
                               else None))

    def _on_reward(self, msg: Float64) -> None:
        # The episode's end may be taken before rewards queued ahead of it (an executor takes
        # one message per subscription per turn): a reward counts until the episode's length.
        record = self._record
        if record is not None and record.started and len(record.rewards) < self._steps:
            record.rewards.append(float(msg.data))

    def _on_end(self, msg: String) -> None:
        self._bridge_ended = True
        record = self._record
        # 'reset' ends the episode before this one (the client asked for the new one), and so
        # does any end before this episode's reset state.
        if record is not None and record.started and msg.data != 'reset':
            record.end = msg.data

    def _on_command(self, msg: Float64MultiArray, info: dict) -> None:
        # When the planner sent it (DDS source timestamp): the planner's rhythm, not this
        # client's.
        if self._record is not None and self._record.started:
            self.command_times.append(sent(info))

    def command_rate(self) -> dict:
        """Rate of the commands seen during episodes and the 99th percentile gap between them."""
        gaps = np.diff(np.asarray(self.command_times))
        gaps = gaps[gaps < 1.0]  # leave out the pauses between episodes
        if not len(gaps):
            return {}
        return {'command_rate_hz': float(1.0 / np.mean(gaps)),
                'command_gap_p99_ms': float(1e3 * np.percentile(gaps, 99)),
                'command_gap_max_ms': float(1e3 * gaps.max())}

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith('planner_node'):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def spin_until(self, executor, done, timeout_s: float) -> bool:
        """Spin ``executor`` until ``done()`` or ``timeout_s``; returns ``done()``."""
        return spin_until(executor, done, timeout_s)

    def wait_for_graph(self, executor, command_topic: str, timeout_s: float = 60.0) -> None:
        """Wait until bridge and planner are up and matched on the state and command topics.

        In lockstep one lost command stalls the loop, so the first command must not go out
        before discovery has matched the planner's publisher with the bridge's subscription.
        """
        def ready() -> bool:
            return (self.reset_client.service_is_ready()
                    and self.goal_pub.get_subscription_count() > 0
                    and self.count_publishers(command_topic) > 0
                    and self.count_subscribers(command_topic) > 0
                    and self.count_publishers(self.state_topic) > 0
                    and self.count_subscribers(self.state_topic) > 1)

        if not self.spin_until(executor, ready, timeout_s):
            raise RuntimeError('the sim bridge or the planner did not come up within '
                               f'{timeout_s:.0f} s')
        # Matching is seen from this node; give the two nodes a moment to see each other too.
        self.spin_until(executor, lambda: False, 1.0)
        if not is_goal_env(self.profile.env_id):
            # Without a goal the planner commands the bridge's first episode at once: let its
            # first, slow plans (warm-up) pass before the first reset ends that episode, so no
            # plan is still in flight across the reset's pauses.
            # (A first episode that ended before the planner came up holds until the reset.)
            self.spin_until(executor, lambda: (int(self.diagnostics.get('plans', 0)) >= 20
                                               or self._bridge_ended), timeout_s)

    def run_episode(self, executor, episode: int, steps: int, timeout_s: float,
                    bridge_ends: bool = False) -> EpisodeRecord:
        """Episode ``episode`` of the bridge (seed = seed + episode), ``steps`` env steps.

        With ``bridge_ends`` the bridge ends the episode itself after ``steps`` (its
        episode_steps), and the episode lasts until its episode_end; else until a termination
        or ``steps`` states after the reset state.
        """
        observation, _ = self.env.reset(seed=self.seed + episode)
        start, goal = split_observation(observation)
        self._goal, self._steps = goal, steps
        if goal is not None:
            msg = PoseStamped()
            msg.header.frame_id = self.profile.fixed_frame
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.pose.position.x, msg.pose.position.y = float(goal[0]), float(goal[1])
            msg.pose.orientation.w = 1.0
            self.goal_pub.publish(msg)
        # Let the planner take the goal, or the last episode's end, before the reset state.
        self.spin_until(executor, lambda: False, 0.3)
        record = EpisodeRecord(self.seed + episode, None if goal is None else goal.tolist(),
                               np.asarray(start, dtype=np.float64))
        self._record = record
        future = self.reset_client.call_async(Trigger.Request())
        self.spin_until(executor, future.done, 10.0)
        record.timed_out = not self.spin_until(
            executor, lambda: record.end or (not bridge_ends and record.states > steps),
            timeout_s)
        # The last rewards may trail the last state on their own topic, far behind it where this
        # client is starved of CPU.
        self.spin_until(executor, lambda: len(record.rewards) >= min(record.states - 1, steps),
                        10.0)
        if goal is None:
            record.success = record.end != 'terminated' and not record.timed_out
        self._record = None
        return record
