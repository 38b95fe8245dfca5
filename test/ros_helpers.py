"""Helpers of the ROS tests: start and stop nodes, a driver node, service calls.

The fixtures ros_env (a private domain on localhost) and driver live in conftest.py.
"""

import json
import os
import subprocess
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from conftest import PYTHON, REPO  # noqa: E402
from diffusion_planner_ros.envs import make_env, split_observation  # noqa: E402
from diffusion_planner_ros.launch_file import read_launch_file  # noqa: E402
from diffusion_planner_ros.nodes.demo.sim_graph import stop_nodes  # noqa: E402

PROFILE = str(REPO / 'config' / 'robots' / 'pointmaze_umaze.yaml')
BUNDLE = str(REPO / 'models' / 'pointmaze_umaze')
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def start(executable, args, env, tmp_path, name):
    log = open(tmp_path / f'{name}.log', 'w')
    process = subprocess.Popen([os.path.join(os.path.dirname(PYTHON), executable), *args],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, tmp_path / f'{name}.log'


def stop(process):
    """Stop one node as sim_graph does: a hang shows its stacks in the node's log, then -9."""
    return stop_nodes([process], timeout=20)[0]


def run_sim_graph(args, env, tmp_path, timeout=400):
    """Run sim_graph with ``args`` to the end; its output and its JSON summary."""
    out = tmp_path / 'graph.json'
    result = subprocess.run([os.path.join(os.path.dirname(PYTHON), 'sim_graph'), *args,
                             '--json', str(out)], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout, json.loads(out.read_text())


def planner_args(**launch):
    """The planner's --ros-args exactly as the launch file builds them (plus overrides)."""
    launch.setdefault('use_sim', 'false')
    _, nodes = read_launch_file(REPO / 'launch' / 'sim.launch.py', REPO, launch)
    return next(n for n in nodes if n.name == 'planner_node').ros_args()


class FakeDriver(Node):
    """A 'real robot' driver: other topic names, other joint order, extra joints, lockstep."""

    def __init__(self, seed, env_id='PointMaze_UMaze-v3'):
        super().__init__('fake_driver')
        self.env = make_env(env_id)
        observation, _ = self.env.reset(seed=seed)
        _, self.goal = split_observation(observation)
        self.state_pub = self.create_publisher(JointState, '/drv/joint_states', 10)
        self.goal_pub = self.create_publisher(PoseStamped, '/goal_pose', 10)
        self.create_subscription(Float64MultiArray, '/drv/cmd', self.on_command, RELIABLE)
        self.commands, self.steps, self.reached = [], 0, False

    def publish_state(self):
        data = self.env.unwrapped.data
        msg = JointState(name=['gripper', 'ball_y', 'wheel', 'ball_x'],
                         position=[0.3, float(data.qpos[1]), 1.0, float(data.qpos[0])],
                         velocity=[0.0, float(data.qvel[1]), 2.0, float(data.qvel[0])])
        self.state_pub.publish(msg)

    def publish_goal(self, xy):
        msg = PoseStamped()
        msg.header.frame_id = 'map'
        msg.pose.position.x, msg.pose.position.y = float(xy[0]), float(xy[1])
        self.goal_pub.publish(msg)

    def on_command(self, msg):
        self.commands.append(list(msg.data))
        self.env.unwrapped.step(np.asarray(msg.data, dtype=np.float32))
        self.steps += 1
        position = self.env.unwrapped.data.qpos[:2]
        self.reached |= bool(np.linalg.norm(position - self.goal) <= 0.45)
        self.publish_state()


def spin_until(executor, done, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        executor.spin_once(timeout_sec=0.01)
    return done()


def wait_logged(executor, log, text, times=1, timeout_s=30):
    """Spin until ``text`` appears ``times`` times in a node's log (bounded); say if it did.

    A node logs what it has taken in ('new goal ...', 'active: commanding'): waiting for the
    line orders the next message after it without a fixed sleep.
    """
    return spin_until(executor, lambda: log.read_text().count(text) >= times, timeout_s)


# A service is ready once its server sees this client's request writer; the server's reply
# writer may not have matched this client's reply reader yet, and a reply sent before then is
# lost (seen in full runs). The first contact therefore repeats a request that changes nothing
# until one is answered, each this long apart.
FIRST_CONTACT_RESEND_S = 1.0


def call_service(node, executor, service_type, name, request, timeout_s=10.0, probe=None):
    """Call service ``name`` from ``node`` and return the reply.

    The node keeps one client per service. Its first contact repeats ``request`` until it is
    answered (a query or a parameter change: doing it twice changes nothing), or ``probe``
    first where ``request`` must go out once (a lifecycle transition).
    """
    clients = node.__dict__.setdefault('_service_clients', {})
    client = clients.get(name)
    if client is None:
        client = node.create_client(service_type, name)
        # The first call may come while the node's process still imports torch: wait for it.
        assert spin_until(executor, client.service_is_ready, 60), f'{name} not available'
        reply = _first_contact(executor, client, request if probe is None else probe, 30.0)
        assert reply is not None, f'{name} never answered'
        clients[name] = client
        if probe is None:
            return reply
    future = client.call_async(request)
    assert spin_until(executor, future.done, timeout_s), f'{name} did not answer'
    return future.result()


def _first_contact(executor, client, request, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        future = client.call_async(request)
        if spin_until(executor, future.done, FIRST_CONTACT_RESEND_S):
            return future.result()
        client.remove_pending_request(future)
    return None


def set_planner_parameter(node, executor, name, value):
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return call_service(node, executor, SetParameters, '/planner_node/set_parameters',
                        request).results[0]


def get_planner_parameter(node, executor, name):
    values = call_service(node, executor, GetParameters, '/planner_node/get_parameters',
                          GetParameters.Request(names=[name])).values
    # A parameter declared without a value (unset: the bundle's) has none to report.
    return parameter_value_to_python(values[0]) if values else None
