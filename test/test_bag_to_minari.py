"""bag_to_minari on bags this test writes (rosbags writer) from a real PointMaze rollout."""

import json
import random
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO, script_env
from diffusion_planner_ros.data.bag import BagConversionConfig, convert_bag
from diffusion_planner_ros.data.maze import MazeGrid, WaypointController
from diffusion_planner_ros.data.minari_io import load_minari, local_dataset_exists, read_episodes
from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.robots import load_profile

PROFILE = REPO / 'config' / 'robots' / 'pointmaze_umaze.yaml'
DT = 0.01
STEPS = 100
GAP = range(30, 50)        # episode 1 loses its states and commands over these steps
EPISODE_START = [1.0, 3.0]  # s; both on the 10 ms grid of the first state
LATENCY = 0.002            # s from a state to the command computed from it
GOAL_TOPICS = dict(goal_topic='/episode_goal', reset_topic='/episode_goal')


def rollout(seed):
    """One PointMaze episode under the noisy waypoint controller: observations, actions, goal."""
    env = make_env('PointMaze_UMaze-v3', max_episode_steps=STEPS + 1)
    controller = WaypointController(MazeGrid.from_env(env))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [obs['observation'].copy()], [], []
    for _ in range(STEPS):
        action = np.clip(controller(obs['observation'], obs['desired_goal'])
                         + 0.3 * rng.standard_normal(2), -1, 1)
        obs, reward, _, _, _ = env.step(action.astype(np.float32))
        observations.append(obs['observation'].copy())
        actions.append(action)
        rewards.append(reward)
    env.close()
    return np.array(observations), np.array(actions), np.array(rewards), obs['desired_goal']


@pytest.fixture
def episodes():
    return [rollout(seed) for seed in (11, 12)]


def write_bag(path, episodes, storage='sqlite3', joint_names=('ball_y', 'hinge', 'ball_x'),
              command_values=2, skip_topics=(), reward=True, extra_goal_at=()):
    """Write the rollouts as a bag: shuffled write order, a gap, and an unrelated topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    JointState, Header = types['sensor_msgs/msg/JointState'], types['std_msgs/msg/Header']
    Time = types['builtin_interfaces/msg/Time']
    Float64MultiArray = types['std_msgs/msg/Float64MultiArray']
    Layout = types['std_msgs/msg/MultiArrayLayout']
    Float64, String = types['std_msgs/msg/Float64'], types['std_msgs/msg/String']
    PoseStamped, Pose = types['geometry_msgs/msg/PoseStamped'], types['geometry_msgs/msg/Pose']
    Point, Quaternion = types['geometry_msgs/msg/Point'], types['geometry_msgs/msg/Quaternion']

    def header(t):
        ns = int(round(t * 1e9))
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id='map')

    def goal_message(t, goal):
        return ('/episode_goal', t, PoseStamped(
            header=header(t), pose=Pose(position=Point(x=goal[0], y=goal[1], z=0.0),
                                        orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))))

    records = [goal_message(t, episodes[1][3]) for t in extra_goal_at]  # (topic, s, message)
    for start, (observations, actions, rewards, goal) in zip(EPISODE_START, episodes):
        records.append(goal_message(start - 0.001, goal))
        for k, obs in enumerate(observations):
            if start != EPISODE_START[0] and k in GAP:
                continue
            t = start + k * DT
            values = {'ball_x': obs[[0, 2]], 'ball_y': obs[[1, 3]], 'hinge': (0.5, -0.5)}
            records.append(('/joint_states', t, JointState(
                header=header(t), name=list(joint_names),
                position=np.array([values[n][0] for n in joint_names]),
                velocity=np.array([values[n][1] for n in joint_names]),
                effort=np.zeros(len(joint_names)))))
            if k < len(actions):
                records.append(('/effort_controller/commands', t + LATENCY, Float64MultiArray(
                    layout=Layout(dim=[], data_offset=0),
                    data=np.resize(actions[k], command_values).astype(np.float64))))
                if reward:
                    # The reward of step k arrives within the step.
                    records.append(('/reward', t + DT / 2, Float64(data=float(rewards[k]))))
    for t in np.arange(0.5, 5.0, 0.05):
        records.append(('/chatter', float(t), String(data='unrelated')))
    random.Random(0).shuffle(records)  # stored out of order
    plugin = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype in (('/joint_states', 'sensor_msgs/msg/JointState'),
                               ('/effort_controller/commands', 'std_msgs/msg/Float64MultiArray'),
                               ('/episode_goal', 'geometry_msgs/msg/PoseStamped'),
                               ('/reward', 'std_msgs/msg/Float64'),
                               ('/chatter', 'std_msgs/msg/String')):
            if topic not in skip_topics:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for topic, t, msg in records:
            if topic in connections:
                writer.write(connections[topic], int(round(t * 1e9)),
                             store.serialize_cdr(msg, connections[topic].msgtype))
    return path


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_bag_becomes_the_rollout_it_recorded(episodes, tmp_path, storage):
    bag = write_bag(tmp_path / 'bag', episodes, storage)
    summary = convert_bag(bag, load_profile(PROFILE), 'test/bag-v0',
                          BagConversionConfig(**GOAL_TOPICS))
    # Episode 0 whole; episode 1 cut by the gap into steps 0..28 and 50..99.
    assert summary['episodes'] == 3
    data = load_minari('test/bag-v0')
    got = read_episodes(data)
    (obs0, act0, rew0, goal0), (obs1, act1, rew1, goal1) = episodes
    expected = [(obs0, act0, rew0, goal0, slice(0, STEPS)),
                (obs1, act1, rew1, goal1, slice(0, GAP.start - 1)),
                (obs1, act1, rew1, goal1, slice(GAP.stop, STEPS))]
    for episode, (obs, act, rew, goal, steps) in zip(got, expected):
        ticks = slice(steps.start, steps.stop + 1)
        np.testing.assert_allclose(episode.observations, obs[ticks], atol=1e-9)
        np.testing.assert_allclose(episode.actions, act[steps], atol=1e-6)
        np.testing.assert_allclose(episode.rewards, rew[steps], atol=1e-12)
        np.testing.assert_allclose(episode.desired_goals, np.tile(goal, (len(obs[ticks]), 1)))
        np.testing.assert_allclose(episode.achieved_goals, obs[ticks][:, :2], atol=1e-9)
    assert data.spec.env_spec.id == 'PointMaze_UMaze-v3'


@pytest.mark.slow
def test_train_py_accepts_a_converted_bag(episodes, tmp_path):
    bag = write_bag(tmp_path / 'bag', episodes)
    env = script_env(tmp_path)
    result = subprocess.run(
        [PYTHON, 'training/bag_to_minari.py', str(bag), '--profile', 'pointmaze_umaze',
         '--out', 'test/bag-train-v0', '--goal-topic', '/episode_goal',
         '--reset-topic', '/episode_goal'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"episodes": 3' in result.stdout
    tiny = ['prior.n_layer=1', 'prior.n_embd=32', 'prior.n_head=2', 'unet.dim=8',
            'unet.dim_mults=[1, 2]', 'unet.embed_dim=8', 'unet.embed_hidden=16',
            'inverse_dynamics.hidden_dim=32', 'training.batch_size=8', 'data.horizon=8',
            'data.dataset_id=test/bag-train-v0', 'training.prior_steps=3',
            'training.diffuser_steps=3', 'training.inverse_dynamics_steps=3']
    result = subprocess.run(
        [PYTHON, 'training/train.py', '--config', 'config/pointmaze_umaze.yaml', '--out',
         str(tmp_path / 'run'), *[arg for item in tiny for arg in ('--set', item)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The bundle records the robot of its data's env, so a planner node needs only the bundle.
    meta = json.loads((tmp_path / 'run' / 'bundle' / 'config.json').read_text())
    assert meta['robot'] == load_profile(PROFILE).to_dict()


@pytest.mark.parametrize('change, options, message', [
    ({'skip_topics': ('/effort_controller/commands',)}, {},
     'has no topic /effort_controller/commands'),
    ({'joint_names': ('ball_x', 'hinge')}, {}, r"lacks joint\(s\) \['ball_y'\]"),
    ({'command_values': 3}, {}, "has 3 values but profile 'pointmaze_umaze' has 2 actuators"),
    ({}, {'goal_topic': '/goal_pose'}, 'has no topic /goal_pose'),
    ({'extra_goal_at': (EPISODE_START[1] + 0.005,)}, {},
     r'starts 2\.000 s into the bag .* is empty'),
    ({}, {'state_topic': '/chatter'}, 'carries std_msgs/msg/String'),
])
def test_bad_bags_name_the_problem_and_write_nothing(episodes, tmp_path, change, options,
                                                     message):
    bag = write_bag(tmp_path / 'bag', episodes, **change)
    config = BagConversionConfig(**{**GOAL_TOPICS, **options})
    with pytest.raises(ValueError, match=message):
        convert_bag(bag, load_profile(PROFILE), 'test/bad-v0', config)
    assert not local_dataset_exists('test/bad-v0')


def test_short_episodes_fail_or_are_dropped_and_no_partial_dataset(episodes, tmp_path):
    bag = write_bag(tmp_path / 'bag', episodes, reward=False)
    profile = load_profile(PROFILE)
    with pytest.raises(ValueError, match='has 29 step'):
        convert_bag(bag, profile, 'test/short-v0',
                    BagConversionConfig(**GOAL_TOPICS, min_steps=40))
    assert not local_dataset_exists('test/short-v0')
    summary = convert_bag(bag, profile, 'test/short-v0',
                          BagConversionConfig(**GOAL_TOPICS, min_steps=40, skip_short=True))
    assert summary['episodes'] == 2 and summary['rewards'] == 0
    with pytest.raises(ValueError, match='already exists'):
        convert_bag(bag, profile, 'test/short-v0', BagConversionConfig(**GOAL_TOPICS))


HOPPER = REPO / 'config' / 'robots' / 'hopper.yaml'
HOPPER_DT = 0.008
# Episode starts (s): the second and third lie off the first one's 8 ms grid, after 1 s gaps.
HOPPER_STARTS = [1.0, 2.4837, 4.0011]


def hopper_rollouts(steps=60):
    """Hopper-v5 under small random torques: (qpos, qvel, observations, actions) per episode."""
    env = make_env('Hopper-v5')
    rng = np.random.default_rng(5)
    episodes = []
    for seed in range(len(HOPPER_STARTS)):
        obs, _ = env.reset(seed=seed)
        data = env.unwrapped.data
        qpos, qvel, observations, actions = [], [], [obs], []
        for _ in range(steps):
            qpos.append(data.qpos.copy())
            qvel.append(data.qvel.copy())
            action = rng.uniform(-0.3, 0.3, 3)
            obs, *_ = env.step(action)
            observations.append(obs)
            actions.append(action)
        qpos.append(data.qpos.copy())
        qvel.append(data.qvel.copy())
        episodes.append((np.array(qpos), np.array(qvel), np.array(observations),
                         np.array(actions)))
    env.close()
    return episodes


def write_hopper_bag(path, episodes, storage, joints=None, reset_type='std_msgs/msg/Empty'):
    """Write rollouts as a driver would record them: its own reset topic, joints by name."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    order = ['rootx', 'rootz', 'rooty', 'thigh_joint', 'leg_joint', 'foot_joint']
    joints = joints or ['foot_joint', 'rooty', 'camera_pan', 'rootx', 'leg_joint', 'rootz',
                        'thigh_joint']
    records = []
    for start, (qpos, qvel, _, actions) in zip(HOPPER_STARTS, episodes):
        records.append(('/episode_reset', start - 0.003, types[reset_type]()))
        for k in range(len(qpos)):
            t = start + k * HOPPER_DT
            position = {name: qpos[k][i] for i, name in enumerate(order)}
            velocity = {name: qvel[k][i] for i, name in enumerate(order)}
            records.append(('/joint_states', t, types['sensor_msgs/msg/JointState'](
                header=types['std_msgs/msg/Header'](
                    stamp=types['builtin_interfaces/msg/Time'](sec=int(t), nanosec=0),
                    frame_id=''),
                name=list(joints),
                position=np.array([position.get(name, 0.25) for name in joints]),
                velocity=np.array([velocity.get(name, 0.0) for name in joints]),
                effort=np.zeros(len(joints)))))
            if k < len(actions):
                records.append(('/effort_controller/commands', t + 0.002,
                                types['std_msgs/msg/Float64MultiArray'](
                                    layout=types['std_msgs/msg/MultiArrayLayout'](
                                        dim=[], data_offset=0),
                                    data=actions[k].astype(np.float64))))
    for t in np.arange(0.5, 5.5, 0.1):
        records.append(('/rosout_text', float(t), types['std_msgs/msg/String'](data='chatter')))
    random.Random(1).shuffle(records)
    plugin = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, t, msg in records:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__,
                                                           typestore=store)
            writer.write(connections[topic], int(round(t * 1e9)),
                         store.serialize_cdr(msg, msg.__msgtype__))
    return path


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_a_bag_with_its_own_reset_topic_gives_each_episode_its_own_grid(tmp_path, storage):
    episodes = hopper_rollouts()
    bag = write_hopper_bag(tmp_path / 'bag', episodes, storage)
    summary = convert_bag(bag, load_profile(HOPPER), 'test/hopper-bag-v0',
                          BagConversionConfig(reset_topic='/episode_reset'))
    assert summary['episodes'] == len(HOPPER_STARTS) and summary['rewards'] == 0
    got = read_episodes(load_minari('test/hopper-bag-v0'))
    for episode, (_, _, observations, actions) in zip(got, episodes):
        # Every episode starts on its own first state, so none is interpolated or lost.
        assert episode.observations.shape == observations.shape
        np.testing.assert_allclose(episode.observations, observations, atol=1e-5)
        np.testing.assert_allclose(episode.actions, actions, atol=1e-6)


def test_a_bag_lacking_a_profile_joint_exits_2_naming_it(tmp_path):
    episodes = hopper_rollouts(steps=5)
    joints = ['rootx', 'rootz', 'rooty', 'thigh_joint', 'foot_joint']
    bag = write_hopper_bag(tmp_path / 'bag', episodes, 'mcap', joints=joints)
    env = script_env(tmp_path)
    result = subprocess.run(
        [PYTHON, 'training/bag_to_minari.py', str(bag), '--profile', 'hopper', '--out',
         'test/no-leg-v0', '--reset-topic', '/episode_reset'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lacks joint(s) ['leg_joint']" in result.stderr
    assert not list((tmp_path / 'datasets').glob('**/*.hdf5'))


def test_a_topic_with_two_message_types_is_refused(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    mixed = tmp_path / 'mixed'
    with Writer(mixed, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for msgtype, message in (('std_msgs/msg/Float64MultiArray', None),
                                 ('std_msgs/msg/String', store.types['std_msgs/msg/String'](
                                     data='x'))):
            connection = writer.add_connection('/effort_controller/commands', msgtype,
                                               typestore=store)
            if message is not None:
                writer.write(connection, 10, store.serialize_cdr(message, msgtype))
    with pytest.raises(ValueError, match='/effort_controller/commands .* more than one message'):
        convert_bag(mixed, load_profile(HOPPER), 'test/mixed-v0',
                    BagConversionConfig(reset_topic='/episode_reset'))
    assert not local_dataset_exists('test/mixed-v0')
