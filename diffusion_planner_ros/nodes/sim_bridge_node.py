"""sim_bridge_node: a gymnasium MuJoCo env behind ros2_control-style topics.

Publishes ``joint_states`` (the profile's joints, by name; effort = the command applied to each
actuated joint in the last step, 0 for the others), /clock and ``robot_markers`` (the robot, and
the maze walls where there are some); applies the latest ``commands``
(Float64MultiArray, one value per actuator in the profile's order) with zero-order hold, and
zero after command_timeout_s. Each step's reward goes out on ``reward`` (std_msgs/Float64) before
the state it led to. An episode ends when the env terminates it (a fall), after episode_steps,
or at ``~/reset``; the sim holds at once, ``episode_end`` (std_msgs/String: terminated,
episode_steps or reset) says so half a second after the episode's last state, and ``~/reset``
starts the next episode no sooner than half a second after that end, publishing its goal on
``episode_goal``.
Two modes: real time (one env step per env dt of wall time) and lockstep (one env step per
received command). Swap this node for a real driver by remapping.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock as RosClock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_planner_ros.data.maze import MazeGrid
from diffusion_planner_ros.envs import is_goal_env, make_env, split_observation
from diffusion_planner_ros.nodes.runner import (
    declare_executor, declare_thread_priority, LAST_MESSAGE_ACK_S, spin_node, subscribe_with_info)
from diffusion_planner_ros.nodes.timing import arrival
from diffusion_planner_ros.robots import load_profile

try:  # No tf2_msgs wheel exists for machines without ROS; TF is published where it imports.
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None

WARN_PERIOD_S = 2.0
# Long enough for a subscriber starved of CPU for a while (a busy 2-core machine starved the
# planner for 0.3 s in a full test run) to take the old episode's messages first.
RESET_PAUSE_S = 0.5


class SimBridgeNode(Node):
    """Steps the env and speaks the ros2_control-style topics."""

    def __init__(self, **node_options):
        super().__init__('sim_bridge_node', **node_options)
        declare_executor(self)
        declare_thread_priority(self)
        self.declare_parameter('profile', '', ParameterDescriptor(
            description='robot profile YAML', read_only=True))
        self.declare_parameter('lockstep', False, ParameterDescriptor(
            description='one env step per received command', read_only=True))
        self.declare_parameter('command_timeout_s', 0.5, ParameterDescriptor(
            description='apply zero when the last command is older', floating_point_range=[
                FloatingPointRange(from_value=0.01, to_value=60.0, step=0.0)]))
        self.declare_parameter('seed', 0, ParameterDescriptor(
            description='seed of the first episode; episode i uses seed + i', read_only=True))
        self.declare_parameter('episode_steps', 0, ParameterDescriptor(
            description='hold the sim after this many steps until ~/reset (0: never)',
            integer_range=[IntegerRange(from_value=0, to_value=10**9, step=1)], read_only=True))
        if not self.get_parameter('profile').value:
            raise ValueError("parameter 'profile' must be set")
        self.profile = load_profile(self.get_parameter('profile').value)
        if not self.profile.env_id:
            raise ValueError(f'profile {self.profile.name!r} names no env_id: the sim bridge '
                             'simulates a gymnasium env (a robot without one runs its own '
                             'driver, launch use_sim:=false)')
        self.env = make_env(self.profile.env_id)
        self.dt = float(self.env.unwrapped.dt) if hasattr(self.env.unwrapped, 'dt') else 0.01
        self.model = self.env.unwrapped.model
        self.data = self.env.unwrapped.data
        self._check_timeout(self.get_parameter('command_timeout_s').value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        space = self.env.action_space
        self.action_low, self.action_high = space.low.astype(float), space.high.astype(float)
        self._lock = threading.Lock()
        self._command = np.zeros(len(self.profile.actuators))
        self._command_time = -math.inf
        self._applied = np.zeros(len(self.profile.actuators))
        self._last_warn: dict[str, float] = {}
        self.episode, self.sim_time, self.steps = 0, 0.0, 0
        self.ended = False
        # An episode's end goes out a pause after its last state, and the next episode starts
        # a pause after its end: the pause timer, the end still to go out (its reason), when
        # the last one went out, and whether ~/reset asked for the next episode.
        self._pause_timer, self._end_reason, self._end_sent = None, None, -math.inf
        self._reset_requested = False
        self._steady = RosClock(clock_type=ClockType.STEADY_TIME)
        self.episode_steps = self.get_parameter('episode_steps').value
        self.goal = None

        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.state_pub = self.create_publisher(JointState, 'joint_states', 10)
        self.clock_pub = self.create_publisher(Clock, '/clock', 10)
        self.marker_pub = self.create_publisher(MarkerArray, 'robot_markers', 10)
        self.goal_pub = self.create_publisher(PoseStamped, 'episode_goal', latched)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.reward_pub = self.create_publisher(Float64, 'reward', reliable)
        self.end_pub = self.create_publisher(String, 'episode_end', reliable)
        self.tf_pub = self.create_publisher(TFMessage, '/tf', 10) if TFMessage else None
        self._command_sub = subscribe_with_info(
            self, Float64MultiArray, 'commands', self._on_command,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.lockstep = self.get_parameter('lockstep').value
        self._reset_episode()
        self._last_publish = time.monotonic()
        if self.lockstep:
            # Watchdog: one lost message must not stall a lockstep loop for good.
            self.create_timer(0.5, self._on_lockstep_watchdog)
        else:
            self.create_timer(self.dt, self._on_tick)
        self.create_timer(0.1, self._publish_markers)
        mode = 'lockstep' if self.lockstep else 'real time'
        self.get_logger().info(f'simulating {self.profile.env_id} ({mode}, dt {self.dt} s)')

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -math.inf) >= WARN_PERIOD_S:
            self._last_warn[key] = now
            self.get_logger().warning(message)

    def _check_timeout(self, command_timeout_s: float) -> None:
        if command_timeout_s <= self.dt:
            raise ValueError(f"parameter 'command_timeout_s' ({command_timeout_s} s) must exceed "
                             f'one env step ({self.dt} s)')

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == 'command_timeout_s':
                try:
                    self._check_timeout(param.value)
                except ValueError as error:
                    return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    # Episodes ------------------------------------------------------------------------------
    def _reset_episode(self) -> None:
        observation, _ = self.env.reset(seed=self.get_parameter('seed').value + self.episode)
        _, self.goal = split_observation(observation)
        self.steps, self.ended = 0, False
        with self._lock:
            self._command[:] = 0.0
            self._command_time = -math.inf
        self._applied = np.zeros(len(self.profile.actuators))
        if self.goal is not None:
            msg = PoseStamped()
            msg.header.stamp = self._stamp()
            msg.header.frame_id = self.profile.fixed_frame
            msg.pose.position.x, msg.pose.position.y = float(self.goal[0]), float(self.goal[1])
            msg.pose.orientation.w = 1.0
            self.goal_pub.publish(msg)
        self._publish_state()

    def _on_reset(self, request, response):
        self.episode += 1
        response.success = True
        response.message = f'episode {self.episode}'
        self._reset_requested = True
        if not self.ended:
            self._end_episode('reset')    # the pause timer starts the next episode after it
        elif self._pause_timer is None:
            # The end went out already: the next episode a pause after it.
            self._pause(RESET_PAUSE_S - (time.monotonic() - self._end_sent))
        return response

    def _end_episode(self, reason: str) -> None:
        """Hold the sim at once; the end goes out a pause later.

        The end and the states travel on different topics: sent a pause after the last state
        (when the states already sent have arrived), and the next episode's first state a pause
        after it, no subscriber takes a state into the wrong episode.
        """
        self.ended, self._end_reason = True, reason
        self._pause(RESET_PAUSE_S)

    def _pause(self, seconds: float) -> None:
        # One pause at a time (every caller starts one where none runs). Wall time: the sim's
        # clock stands still while it holds.
        self._pause_timer = self.create_timer(max(seconds, 1e-3), self._on_pause,
                                              clock=self._steady)

    def _send_end(self) -> None:
        self.end_pub.publish(String(data=self._end_reason))
        self.get_logger().info(f'episode ended after {self.steps} steps: {self._end_reason}')
        self._end_reason, self._end_sent = None, time.monotonic()

    def _on_pause(self) -> None:
        self.destroy_timer(self._pause_timer)
        self._pause_timer = None
        if self._end_reason is not None:
            self._send_end()
            if self._reset_requested:
                self._pause(RESET_PAUSE_S)
        elif self._reset_requested:
            self._reset_requested = False
            self._reset_episode()

    # Commands ------------------------------------------------------------------------------
    def _on_command(self, msg: Float64MultiArray, info: dict | None) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (len(self.profile.actuators),):
            self._warn('command:length', f'dropped command of length {values.size}: expected '
                       f'{len(self.profile.actuators)} ({", ".join(self.profile.actuators)})')
            return
        if not np.all(np.isfinite(values)):
            self._warn('command:nan', f'dropped command with NaN or inf: {values.tolist()}')
            return
        with self._lock:
            self._command = np.clip(values, self.action_low, self.action_high)
            # Its age counts from its arrival: a bridge that stalled must not take the backlog
            # of a dead planner for fresh commands. (On the events executor a command it
            # delivers has no arrival time and counts from now; one taken at a step keeps it.)
            self._command_time = arrival(info)
        if self.lockstep:
            self._step(self._command.copy())

    def _on_tick(self) -> None:
        self._take_arrived_commands()
        # The applied command holds for one step: zero from the step that would end after the
        # command's age passes command_timeout_s.
        with self._lock:
            fresh = time.monotonic() - self._command_time + self.dt <= self.get_parameter(
                'command_timeout_s').value
            action = self._command.copy() if fresh else np.zeros_like(self._command)
        self._step(action)

    def _take_arrived_commands(self) -> None:
        """Handle the commands that have arrived but wait in the executor's queue.

        A robot applies at its step the latest command that reached it before the step, as a
        ros2_control hardware interface reads its command buffer. SingleThreadedExecutor runs a
        ready timer before a ready subscription, and the events executor a timer event queued
        before the command's, so without this a command that arrived while the executor was
        busy would wait for the step after.
        """
        sub = self._command_sub
        while True:
            with sub.handle:
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
            if taken is None:
                return
            self._on_command(*taken)

    def _on_lockstep_watchdog(self) -> None:
        if not self.ended and time.monotonic() - self._last_publish > 1.0:
            self._warn('lockstep', 'no command for 1 s in lockstep: sending the state again')
            self._publish_state()

    def _step(self, action: np.ndarray) -> None:
        if self.ended:
            return
        # Step the bare env: episodes end by a termination, ~/reset or episode_steps, not by
        # gymnasium's time limit.
        _, reward, terminated, _, _ = self.env.unwrapped.step(action.astype(np.float32))
        self._applied = action.astype(np.float64)
        self.steps += 1
        self.sim_time += self.dt
        self.reward_pub.publish(Float64(data=float(reward)))
        self._publish_state()
        if terminated:
            self._end_episode('terminated')
        elif self.episode_steps and self.steps >= self.episode_steps:
            self._end_episode('episode_steps')

    # Output --------------------------------------------------------------------------------
    def _stamp(self) -> Time:
        seconds = int(self.sim_time)
        return Time(sec=seconds, nanosec=int(round((self.sim_time - seconds) * 1e9)))

    def _publish_state(self) -> None:
        self._last_publish = time.monotonic()
        stamp = self._stamp()
        self.clock_pub.publish(Clock(clock=stamp))
        names, positions, velocities = self.profile.joint_state_from_mujoco(self.model, self.data)
        applied = dict(zip(self.profile.actuators, self._applied.tolist()))
        msg = JointState(name=names, position=positions, velocity=velocities,
                         effort=[applied.get(name, 0.0) for name in names])
        msg.header.stamp = stamp
        self.state_pub.publish(msg)

    def _publish_markers(self) -> None:
        import mujoco

        stamp, frame = self._stamp(), self.profile.fixed_frame
        body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, self.profile.plan_body)
        x, y, z = (float(v) for v in self.data.xpos[body])
        if self.tf_pub is not None:
            transform = TransformStamped()
            transform.header.stamp, transform.header.frame_id = stamp, frame
            transform.child_frame_id = self.profile.plan_body
            translation = transform.transform.translation
            translation.x, translation.y, translation.z = x, y, z
            transform.transform.rotation.w = 1.0
            self.tf_pub.publish(TFMessage(transforms=[transform]))
        if self.marker_pub.get_subscription_count() == 0:
            return
        markers = MarkerArray()
        robot = Marker(ns='robot', id=0, type=Marker.SPHERE, action=Marker.ADD)
        robot.header.stamp, robot.header.frame_id = stamp, frame
        robot.pose.position.x, robot.pose.position.y, robot.pose.position.z = x, y, z
        robot.pose.orientation.w = 1.0
        robot.scale.x = robot.scale.y = robot.scale.z = 0.2
        robot.color.r, robot.color.g, robot.color.b, robot.color.a = 1.0, 0.8, 0.1, 1.0
        markers.markers.append(robot)
        if is_goal_env(self.profile.env_id):
            markers.markers.append(self._walls(stamp, frame))
        self.marker_pub.publish(markers)

    def _walls(self, stamp, frame) -> Marker:
        grid = MazeGrid.from_env(self.env)
        walls = Marker(ns='walls', id=1, type=Marker.CUBE_LIST, action=Marker.ADD)
        walls.header.stamp, walls.header.frame_id = stamp, frame
        walls.pose.orientation.w = 1.0
        walls.scale.x = walls.scale.y = grid.scaling
        walls.scale.z = 0.4 * grid.scaling
        walls.color.r = walls.color.g = walls.color.b = 0.5
        walls.color.a = 1.0
        for row in range(grid.rows):
            for col in range(grid.cols):
                if not grid.free[row, col]:
                    x, y = grid.cell_to_xy((row, col))
                    walls.points.append(Point(x=float(x), y=float(y), z=0.2 * grid.scaling))
        return walls

    def stop(self) -> None:
        """Apply zero to the actuators before exiting, and report it on joint_states.

        An episode end still pending goes out first.
        """
        if self._end_reason is not None:
            self._send_end()
            self.end_pub.wait_for_all_acked(Duration(seconds=LAST_MESSAGE_ACK_S))
        with self._lock:
            self._command[:] = 0.0
        zero = np.zeros(len(self.profile.actuators))
        self.env.unwrapped.step(zero.astype(np.float32))
        self._applied = zero
        self._publish_state()
        # Destroying the publisher at once can lose that last state: wait (bounded) until every
        # reliable subscriber has acknowledged it.
        self.state_pub.wait_for_all_acked(Duration(seconds=LAST_MESSAGE_ACK_S))
        self.env.close()


def main(args=None) -> None:
    """Entry point of the sim_bridge_node console script."""
    spin_node(SimBridgeNode, args)


if __name__ == '__main__':
    main()
