"""Real rclpy over Fast DDS: the sim graph, a driver swap, bad input, state timeout.

Each test runs in its own ROS domain limited to localhost, with bounded time.
"""

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from conftest import process_gone, REPO  # noqa: E402
from diffusion_planner_ros.nodes.runner import DUMP_STACKS_SIGNAL  # noqa: E402
from diffusion_planner_ros.nodes.demo.sim_graph import stop_nodes  # noqa: E402
from diffusion_planner_ros.nodes.timing import sent  # noqa: E402
from ros_helpers import (BUNDLE, FakeDriver, get_planner_parameter, planner_args,  # noqa: E402
                         PROFILE, RELIABLE, run_sim_graph, set_planner_parameter, spin_until,
                         start, stop, wait_logged)


@pytest.mark.serial
def test_sim_graph_lockstep_episodes_reach_their_goals(ros_env, tmp_path):
    output, summary = run_sim_graph(['--episodes', '2'], ros_env, tmp_path)
    assert summary['episodes'] == 2 and summary['timed_out'] == 0, output[-3000:]
    # The shipped UMaze bundle reaches every goal of these seeds in lockstep (as evaluate.py).
    assert summary['success_rate'] == 1.0, output[-3000:]
    assert summary['seeds'] == [1000, 1001]
    assert float(summary['planner_diagnostics']['plan_latency_p50_ms']) > 0
    assert all(code == 0 for code in summary['exit_codes'])


def test_sim_graph_shows_where_a_node_hangs_before_killing_it(tmp_path):
    # A node that ignores SIGINT: stop_nodes asks for its stacks, then kills it; one that
    # stops is left to exit on its own.
    stubborn = ('import faulthandler, signal, time\n'
                'signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                f'faulthandler.register({int(DUMP_STACKS_SIGNAL)}, all_threads=True)\n'
                'def hang_here():\n'
                '    while True:\n'
                '        time.sleep(0.05)\n'
                'print("ready", flush=True)\n'
                'hang_here()\n')
    log = (tmp_path / 'stubborn.log').open('w')
    hung = subprocess.Popen([sys.executable, '-c', stubborn], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    polite = subprocess.Popen(
        [sys.executable, '-c', 'import signal, sys, time\n'
         'signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n'
         'print("ready", flush=True)\n'
         'time.sleep(60)\n'], stdout=subprocess.PIPE, text=True)
    assert hung.stdout.readline().strip() == 'ready'
    assert polite.stdout.readline().strip() == 'ready'
    codes = stop_nodes([hung, polite], timeout=1.0)
    log.close()
    assert codes == [-signal.SIGKILL, 0]
    assert 'in hang_here' in (tmp_path / 'stubborn.log').read_text()


# A real robot's profile: no simulator, the maze drawn by hand, plans drawn from their joint
# positions (no kinematics model).
NO_SIM_PROFILE = '''name: my_ball
observation:
  - {joint: ball_x, field: position}
  - {joint: ball_y, field: position}
  - {joint: ball_x, field: velocity}
  - {joint: ball_y, field: velocity}
actuators: [ball_x, ball_y]
fixed_frame: odom
control_period_s: 0.01
maze_map: [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
'''


def test_driver_swap_remapped_topics_other_joint_order(driver, ros_env, tmp_path):
    node, executor = driver
    (tmp_path / 'my_ball.yaml').write_text(NO_SIM_PROFILE)
    args = planner_args(state_topic='/drv/joint_states', command_topic='/drv/cmd')
    # Lockstep runs the bundle's protocol (4 actions per plan), whatever the rates say.
    planner, log = start('planner_node', [*args, '-p', 'lockstep:=true', '-p',
                                          'plan_rate_hz:=100.0', '-p',
                                          f'profile:={tmp_path / "my_ball.yaml"}'],
                         ros_env, tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.count_subscribers('/drv/joint_states') > 0
                          and node.count_publishers('/drv/cmd') > 0
                          and node.goal_pub.get_subscription_count() > 0, 60), log.read_text()
        assert wait_logged(executor, log, 'active: commanding'), log.read_text()
        # Bad input first: every message must be dropped with a warning, the node must live.
        node.state_pub.publish(JointState(name=['ball_x', 'ball_y'], position=[float('nan'), 0.0],
                                          velocity=[0.0, 0.0]))
        node.state_pub.publish(JointState(name=['ball_x', 'ball_y'], position=[0.0],
                                          velocity=[0.0, 0.0]))
        node.state_pub.publish(JointState(name=['ball_x'], position=[0.0], velocity=[0.0]))
        node.publish_goal([0.0, 0.0])   # a wall cell of the U maze
        node.publish_goal([50.0, 3.0])  # outside the map
        for warning in ('dropped joint_states: ', 'outside the free maze cells'):
            assert wait_logged(executor, log, warning), log.read_text()[-2000:]
        assert planner.poll() is None
        assert node.commands == []
        node.publish_goal(node.goal)
        assert wait_logged(executor, log, 'new goal'), log.read_text()[-2000:]
        node.publish_state()
        assert spin_until(executor, lambda: node.reached or node.steps >= 300, 180)
        assert node.reached, f'ball did not reach the goal in {node.steps} steps'
        assert all(len(c) == 2 and np.all(np.abs(c) <= 1.0) for c in node.commands)
    finally:
        code = stop(planner)
    text = log.read_text()
    assert 'dropped joint_states' in text and 'NaN or inf' in text
    assert "lacks joint(s) ['ball_y']" in text
    assert 'outside the free maze cells' in text
    assert 'replan every 4 control steps' in text
    assert 'profile my_ball' in text
    assert code == 0, text[-2000:]


@pytest.mark.serial
def test_a_bundle_alone_runs_its_robot(ros_env, tmp_path):
    # No profile, no params file: the bundle records its robot (the Medium maze, whose map
    # drops no goal of its free cells) and its sampler settings (k = 5).
    rclpy.init()
    node = FakeDriver(seed=1000, env_id='PointMaze_Medium-v3')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    planner, log = start('planner_node', [
        '--ros-args', '-p', f'bundle:={REPO / "models" / "pointmaze_medium"}', '-p',
        'lockstep:=true', '-r', 'joint_states:=/drv/joint_states', '-r', 'commands:=/drv/cmd'],
        ros_env, tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.count_subscribers('/drv/joint_states') > 0
                          and node.goal_pub.get_subscription_count() > 0, 60), log.read_text()
        node.publish_goal(node.goal)
        assert spin_until(executor, lambda: 'goal' in log.read_text(), 10), log.read_text()
        node.publish_state()
        # A driver that repeats its goal does not restart the plan each time.
        assert spin_until(executor, lambda: node.steps >= 20, 60)
        node.publish_goal(node.goal)
        assert spin_until(executor, lambda: node.reached or node.steps >= 300, 300)
        assert node.reached, f'ball did not reach {node.goal} in {node.steps} steps'
    finally:
        code = stop(planner)
        node.destroy_node()
        rclpy.try_shutdown()
    text = log.read_text()
    assert 'profile pointmaze_medium' in text and 'k=5' in text, text[-2000:]
    assert text.count('new goal') == 1
    assert 'outside the free maze cells' not in text
    assert code == 0, text[-2000:]


@pytest.mark.parametrize('bundle, profile, message', [
    ('hopper', 'pointmaze_umaze', "robot profile 'pointmaze_umaze' has 4 observation entries "
                                  'and 2 actuators, the model 11 and 3'),
    ('pointmaze_umaze', 'renamed', "bundle .*pointmaze_umaze 'pointmaze_umaze': observation "
                                   r'\[ball_x.position, y.position'),
    ('pointmaze_umaze', 'pointmaze_medium', "env 'PointMaze_Medium-v3' against "
                                            "'PointMaze_UMaze-v3'"),
    ('hopper', 'hopper_with_map', "gives a maze_map, but bundle .*hopper plans for returns"),
])
def test_a_profile_that_does_not_fit_the_bundle_stops_the_node(ros_env, tmp_path, bundle, profile,
                                                               message):
    if profile == 'renamed':
        profile = tmp_path / 'renamed.yaml'
        profile.write_text(NO_SIM_PROFILE.replace('ball_y', 'y'))
    if profile == 'hopper_with_map':
        profile = tmp_path / 'hopper.yaml'
        profile.write_text((REPO / 'config' / 'robots' / 'hopper.yaml').read_text().replace(
            'env_id: Hopper-v5', 'maze_map: [[1, 1], [1, 0]]'))
    result = subprocess.run(
        [str(Path(sys.executable).parent / 'planner_node'), '--ros-args', '-p',
         f'bundle:={REPO / "models" / bundle}', '-p', f'profile:={profile}'],
        env=ros_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_planner_commands_zero_when_state_stops(driver, ros_env, tmp_path):
    node, executor = driver
    args = planner_args(state_topic='/drv/joint_states', command_topic='/drv/cmd')
    planner, log = start('planner_node', [*args, '-p', 'state_timeout_s:=0.3',
                                          '-p', 'plan_process:=true'], ros_env,
                         tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.count_publishers('/drv/cmd') > 0, 60)
        node.commands.clear()
        assert spin_until(executor, lambda: len(node.commands) >= 20, 30)
        assert all(c == [0.0, 0.0] for c in node.commands)
        # Asked for its stacks (what sim_graph does before it kills a hung node), the node
        # prints them and goes on commanding.
        planner.send_signal(DUMP_STACKS_SIGNAL)
        node.commands.clear()
        assert spin_until(executor, lambda: len(node.commands) >= 20, 30)
    finally:
        code = stop(planner)
    text = log.read_text()
    assert 'in spin_node' in text, text[-3000:]
    assert 'no fresh joint_states: commanding zero' in text
    # The node says which path plans and why (ONNX Runtime is the CPU default), and where: in
    # real time, a planning process of its own, which ends with the node.
    assert 'backend onnx (CPU with onnxruntime), in planning process' in text
    assert code == 0, text[-3000:]
    child = int(re.search(r'in planning process (\d+)', text).group(1))
    assert process_gone(child), f'planning process {child} outlived its node'


def test_planner_rejects_invalid_runtime_parameters(driver, ros_env, tmp_path):
    node, executor = driver
    args = planner_args(state_topic='/drv/joint_states', command_topic='/drv/cmd')
    # In a planning process: every accepted change must reach it, and a rejected one not.
    planner, log = start('planner_node', [*args, '-p', 'plan_process:=true'], ros_env,
                         tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.count_publishers('/drv/cmd') > 0, 60)
        bad = [
            ('refine_steps', 500, 'trained levels'),      # the bundle has 100 levels
            ('refine_steps', -1, ''),                     # below the declared range
            ('warm_start_steps', 2, 'has no warm start'),   # a Trajectory Diffuser bundle
            ('candidates', 4, 'no critic to rank plans'),  # the shipped bundle has none
            ('candidates', 0, ''),                        # below the declared range
            ('guidance_scale', 'high', ''),               # wrong type
            ('plan_rate_hz', 1.0, 'plans 15 steps ahead'),  # 100 control steps per plan
            ('bundle', '/elsewhere', ''),                 # read-only
            ('plan_budget_ms', -5.0, "'plan_budget_ms'"),
            ('plan_budget_ms', float('nan'), "'plan_budget_ms'"),
            ('plan_budget_ms', 900.0, 'state_timeout_s'),  # a plan as long as a timeout
            ('added_latency_ms', -1.0, "'added_latency_ms'"),
            ('added_latency_ms', float('inf'), "'added_latency_ms'"),
            ('plan_lead_steps', -2, ''),                  # below the declared range
            ('plan_lead_steps', 2, 'transition model'),   # the maze bundle predicts nothing
        ]
        for name, value, reason in bad:
            before = get_planner_parameter(node, executor, name)
            result = set_planner_parameter(node, executor, name, value)
            assert not result.successful, (name, value)
            assert reason in result.reason, result.reason
            assert get_planner_parameter(node, executor, name) == before
        assert set_planner_parameter(node, executor, 'refine_steps', 2).successful
        assert get_planner_parameter(node, executor, 'refine_steps') == 2
        assert set_planner_parameter(node, executor, 'candidates', 1).successful
        assert set_planner_parameter(node, executor, 'plan_rate_hz', 50.0).successful
        assert set_planner_parameter(node, executor, 'plan_budget_ms', 4.0).successful
        assert set_planner_parameter(node, executor, 'added_latency_ms', 2.0).successful
        assert set_planner_parameter(node, executor, 'plan_lead_steps', 0).successful
        assert planner.poll() is None
        # The node still commands after the changes (zero here: no state has come).
        node.commands.clear()
        assert spin_until(executor, lambda: len(node.commands) >= 10, 30)
    finally:
        code = stop(planner)
    assert code == 0, log.read_text()[-3000:]


def test_bridge_drops_bad_commands_and_keeps_running(ros_env, tmp_path):
    bridge, log = start('sim_bridge_node', ['--ros-args', '-p', f'profile:={PROFILE}'],
                        ros_env, tmp_path, 'bridge')
    rclpy.init()
    node = Node('commander')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    states = []
    node.create_subscription(JointState, 'joint_states', states.append, 10)
    publisher = node.create_publisher(Float64MultiArray, 'commands', RELIABLE)
    try:
        assert spin_until(executor, lambda: len(states) > 10, 60), log.read_text()
        for data in ([1.0, 0.0, 0.0], [], [float('nan'), 0.0], [float('inf'), 1.0]):
            publisher.publish(Float64MultiArray(data=data))
        for warning in ('dropped command of length 3', 'dropped command with NaN or inf'):
            assert wait_logged(executor, log, warning, timeout_s=10), log.read_text()
        assert bridge.poll() is None
        # The bad commands were never applied: the ball, at rest at reset, has not moved.
        assert np.allclose(states[-1].velocity, 0.0, atol=1e-9)
        count = len(states)
        assert spin_until(executor, lambda: len(states) > count + 20, 10)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = stop(bridge)
    text = log.read_text()
    assert 'dropped command of length 3' in text and 'dropped command with NaN or inf' in text
    assert code == 0


def test_planner_node_runs_a_baselines_bundle(driver, ros_env, tmp_path):
    """The node plans with whatever method the bundle records (here a Diffuser bundle)."""
    from test_baselines import method_bundle
    bundle = method_bundle(tmp_path / 'diffuser_bundle', 'diffuser')
    node, executor = driver
    args = planner_args(state_topic='/drv/joint_states', command_topic='/drv/cmd')
    planner, log = start('planner_node', [*args, '-p', f'bundle:={bundle}', '-p',
                                          'lockstep:=true', '-p', 'device:=cpu'],
                         ros_env, tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.count_subscribers('/drv/joint_states') > 0
                          and node.goal_pub.get_subscription_count() > 0, 60), log.read_text()
        assert wait_logged(executor, log, 'active: commanding'), log.read_text()
        node.publish_goal(node.goal)
        assert wait_logged(executor, log, 'new goal'), log.read_text()[-2000:]
        node.publish_state()
        assert spin_until(executor, lambda: node.steps >= 12, 120), log.read_text()[-2000:]
        assert all(len(c) == 2 and np.all(np.isfinite(c)) and np.all(np.abs(c) <= 1.0)
                   for c in node.commands)
    finally:
        code = stop(planner)
    text = log.read_text()
    assert 'method diffuser' in text
    assert code == 0, text[-2000:]


def test_planner_node_follows_a_maze_protocol_plan_in_real_time(driver, ros_env, tmp_path):
    """A Diffuser bundle that plans once per goal runs at wall clock whatever the plan rate."""
    from test_maze_protocol import maze_config
    from test_bundle_planner import write_bundle
    bundle = write_bundle(tmp_path / 'maze', maze_config(track_states=True, replan_every=1))
    node, executor = driver
    node.create_timer(0.01, node.publish_state)     # the robot's clock: a state every 10 ms
    args = planner_args(state_topic='/drv/joint_states', command_topic='/drv/cmd')
    # 25 Hz plans of a 100 Hz loop would be 4 actions per plan for a bundle that plays its
    # actions back; this one follows its plan's states at every state instead.
    planner, log = start('planner_node', [*args, '-p', f'bundle:={bundle}', '-p',
                                          'lockstep:=false', '-p', 'control_rate_hz:=100.0',
                                          '-p', 'plan_rate_hz:=25.0', '-p', 'device:=cpu'],
                         ros_env, tmp_path, 'planner')
    try:
        assert spin_until(executor, lambda: node.goal_pub.get_subscription_count() > 0, 60)
        assert wait_logged(executor, log, 'active: commanding'), log.read_text()
        node.publish_goal(node.goal)
        assert wait_logged(executor, log, 'new goal'), log.read_text()[-2000:]
        assert spin_until(executor, lambda: len(node.commands) >= 30, 60), log.read_text()[-2000:]
        assert all(len(c) == 2 and np.all(np.isfinite(c)) and np.all(np.abs(c) <= 1.0)
                   for c in node.commands)
        assert planner.poll() is None
    finally:
        code = stop(planner)
    text = log.read_text()
    assert 'method diffuser' in text and 'replan every 1 control steps' in text, text[-2000:]
    assert 'cannot configure' not in text
    assert code == 0, text[-2000:]


def test_nodes_refuse_bad_start_parameters_with_their_names(ros_env, tmp_path):
    params = tmp_path / 'bad_params.yaml'
    params.write_text('planner_node:\n  ros__parameters:\n    refine_steps: "five"\n')
    cases = [
        ('planner_node', ['--ros-args', '-p', f'bundle:={BUNDLE}', '-p', f'profile:={PROFILE}',
                          '--params-file', str(params)], "parameter 'refine_steps'"),
        ('planner_node', ['--ros-args', '-p', f'bundle:={BUNDLE}', '-p', f'profile:={PROFILE}',
                          '-p', 'plan_rate_hz:=-3.0'], 'plan_rate_hz out of range'),
        ('sim_bridge_node', ['--ros-args', '-p', f'profile:={PROFILE}',
                             '-p', 'command_timeout_s:=-1.0'], 'command_timeout_s out of range'),
        ('planner_node', ['--ros-args', '-p', f'bundle:={BUNDLE}', '-p', f'profile:={PROFILE}',
                          '-p', 'executor:=fast'], "executor 'fast' is not one of single, events"),
        ('sim_bridge_node', ['--ros-args', '-p', f'profile:={PROFILE}', '-p', 'executor:=fast'],
         "executor 'fast'"),
        ('planner_node', ['--ros-args', '-p', f'bundle:={BUNDLE}', '-p', f'profile:={PROFILE}',
                          '-p', 'thread_priority:=100'], 'thread_priority out of range'),
        ('sim_bridge_node', ['--ros-args', '-p', f'profile:={PROFILE}',
                             '-p', 'thread_priority:=-1'], 'thread_priority out of range'),
    ]
    for executable, args, named in cases:
        process, log = start(executable, args, ros_env, tmp_path, executable)
        assert process.wait(timeout=60) == 2
        text = log.read_text()
        assert 'cannot start:' in text and named in text, text[-2000:]
        assert 'Traceback' not in text


@pytest.mark.serial
@pytest.mark.parametrize('executor', ['single', 'events'])
def test_sim_graph_hopper_lockstep_matches_evaluate(executor, ros_env, tmp_path):
    # robot:=hopper picks the hopper profile, bundle and rates; in lockstep the planner spends
    # the bridge's /reward off its returns-to-go target and starts afresh at /episode_end, so
    # its episodes are evaluate.py's, return for return, on either executor of both nodes.
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import run_planner_episode
    from diffusion_planner_ros.planning import load_planner

    params = yaml.safe_load((REPO / 'config' / 'sim' / 'hopper.yaml').read_text())
    for node in ('planner_node', 'sim_bridge_node'):
        params[node]['ros__parameters']['executor'] = executor
    params_file = tmp_path / 'hopper.yaml'
    params_file.write_text(yaml.safe_dump(params))
    output, summary = run_sim_graph(['robot:=hopper', f'params:={params_file}', '--episodes',
                                     '2', '--steps', '80'], ros_env, tmp_path)
    assert summary['robot'] == 'hopper' and summary['timed_out'] == 0, output[-3000:]
    assert summary['planner_diagnostics']['executor'] == executor
    assert summary['episode_ends'] == ['episode_steps', 'episode_steps']
    planner = load_planner(REPO / 'models' / 'hopper', 'cpu')
    env = make_env('Hopper-v5', max_episode_steps=80)
    offline = [run_planner_episode(planner, env, seed).episode_return
               for seed in summary['seeds']]
    env.close()
    assert np.allclose(summary['episode_returns'], offline, rtol=1e-6, atol=1e-6), \
        (summary['episode_returns'], offline, output[-3000:])
    assert 'score_mean' in summary and summary['success_rate'] == 1.0


def test_bridge_reports_rewards_and_a_fall_then_holds_until_reset(ros_env, tmp_path):
    from std_msgs.msg import Float64, String
    from std_srvs.srv import Trigger

    hopper = str(REPO / 'config' / 'robots' / 'hopper.yaml')
    bridge, log = start('sim_bridge_node', ['--ros-args', '-p', f'profile:={hopper}', '-p',
                                            'lockstep:=true'], ros_env, tmp_path, 'bridge')
    rclpy.init()
    node = Node('commander')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    states, rewards, ends, sent_at = [], [], [], {}    # sent_at: when the bridge sent each

    def on_state(msg, info):
        states.append(msg)
        sent_at[len(states)] = sent(info)

    def on_end(msg, info):
        ends.append(msg.data)
        sent_at['end'] = sent(info)

    node.create_subscription(JointState, 'joint_states', on_state, 100)
    node.create_subscription(Float64, 'reward', lambda m: rewards.append(m.data), RELIABLE)
    node.create_subscription(String, 'episode_end', on_end, RELIABLE)
    publisher = node.create_publisher(Float64MultiArray, 'commands', RELIABLE)
    reset = node.create_client(Trigger, '/sim_bridge_node/reset')
    try:
        # Matched both ways: the bridge hears the commands, this node its states, rewards
        # and ends.
        assert spin_until(executor, lambda: publisher.get_subscription_count() > 0
                          and reset.service_is_ready() and len(states) > 0
                          and node.count_publishers('reward') > 0
                          and node.count_publishers('episode_end') > 0, 60), log.read_text()
        # Full torque on every joint throws the hopper over within a few dozen steps.
        for _ in range(200):
            if ends:
                break
            count = len(states)
            publisher.publish(Float64MultiArray(data=[1.0, 1.0, 1.0]))
            spin_until(executor, lambda: len(states) > count or bool(ends), 5)
        assert spin_until(executor, lambda: bool(ends), 5), log.read_text()[-2000:]
        assert ends == ['terminated'] and 0 < len(rewards) < 200
        # The end goes out a pause (0.5 s) after the episode's last state, so no subscriber
        # takes that state after the end (they travel on different topics).
        assert sent_at['end'] - sent_at[len(states)] >= 0.45
        # The sim holds: commands after the fall step nothing.
        held, spent = len(states), len(rewards)
        publisher.publish(Float64MultiArray(data=[1.0, 1.0, 1.0]))
        spin_until(executor, lambda: False, 0.5)   # nothing may come: nothing to wait for
        assert len(states) == held and len(rewards) == spent
        # The new episode's state says the reset happened (its reply may be lost at first
        # contact, see ros_helpers.call_service).
        reset.call_async(Trigger.Request())
        assert spin_until(executor, lambda: len(states) > held, 10)
        publisher.publish(Float64MultiArray(data=[0.0, 0.0, 0.0]))
        assert spin_until(executor, lambda: len(rewards) == spent + 1, 5)  # stepping again
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        code = stop(bridge)
    assert 'ended after' in log.read_text() and code == 0


@pytest.mark.serial
def test_the_sim_graph_runs_on_the_bridge_clock(ros_env, tmp_path):
    # The launch file's graph with the bridge: the planner stamps its plans with the bridge's
    # sim time (/clock, from 0 s), not with this machine's clock; its timers still run.
    from nav_msgs.msg import Path as PathMsg
    from rosgraph_msgs.msg import Clock

    from diffusion_planner_ros.launch_file import read_launch_file

    _, specs = read_launch_file(REPO / 'launch' / 'sim.launch.py', REPO)
    # In lockstep (cheaper to start); the clock is the same in both modes.
    processes = [start(spec.executable, [*spec.ros_args(), '-p', 'lockstep:=true'], ros_env,
                       tmp_path, spec.name)[0] for spec in specs if spec.enabled]
    rclpy.init()
    node = Node('clock_listener')
    clocks, plans = [], []
    node.create_subscription(Clock, '/clock', lambda m: clocks.append(
        m.clock.sec + 1e-9 * m.clock.nanosec), 10)
    node.create_subscription(PathMsg, '/plan', lambda m: plans.append(
        m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec), 10)
    goal = node.create_publisher(__import__('geometry_msgs.msg').msg.PoseStamped, '/goal_pose',
                                 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: goal.get_subscription_count() > 0, 120), \
            (tmp_path / 'planner_node.log').read_text()[-3000:]
        message = goal.msg_type()
        message.header.frame_id = 'map'
        message.pose.position.x, message.pose.position.y = 1.0, 1.0
        assert wait_logged(executor, tmp_path / 'planner_node.log', 'active: commanding')
        goal.publish(message)
        assert spin_until(executor, lambda: len(plans) >= 5 and len(clocks) >= 5, 120)
    finally:
        codes = stop_nodes(processes, timeout=20)
        node.destroy_node()
        rclpy.try_shutdown()
    assert all(0.0 <= stamp <= max(clocks) + 1.0 for stamp in plans), (plans[:5], clocks[-5:])
    assert max(plans) > 0.0
    assert codes == [0] * len(processes)
