"""Robot profiles: JointState -> observation by joint name, equal to the gymnasium observation."""

import numpy as np
import pytest

from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.robots import Kinematics, load_profile
from conftest import REPO

PROFILE = REPO / 'config' / 'robots' / 'pointmaze_umaze.yaml'


def test_bridge_joint_state_equals_the_gymnasium_observation():
    profile = load_profile(PROFILE)
    env = make_env(profile.env_id)
    observation, _ = env.reset(seed=4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        observation, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        names, positions, velocities = profile.joint_state_from_mujoco(
            env.unwrapped.model, env.unwrapped.data)
        vector = profile.observation_from_joint_state(names, positions, velocities)
        assert np.allclose(vector, observation['observation'], atol=1e-12)


def test_joints_are_found_by_name_in_any_order_with_extras():
    profile = load_profile(PROFILE)
    names = ['wheel', 'ball_y', 'arm', 'ball_x']
    vector = profile.observation_from_joint_state(names, [9.0, 2.0, 8.0, 1.0],
                                                  [7.0, 4.0, 6.0, 3.0])
    assert vector.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize('names,positions,velocities,message', [
    (['ball_x'], [0.0], [0.0], r"lacks joint\(s\) \['ball_y'\]"),
    (['ball_x', 'ball_y'], [0.0], [0.0, 0.0], '2 names but 1 positions'),
    (['ball_x', 'ball_y'], [0.0, 0.0], [], '2 names but 0 velocities'),
    (['ball_x', 'ball_y'], [np.nan, 0.0], [0.0, 0.0], 'NaN or inf'),
    (['ball_x', 'ball_y'], [0.0, 0.0], [np.inf, 0.0], 'NaN or inf'),
    (['ball_x', 'ball_x'], [0.0, 0.0], [0.0, 0.0], 'duplicate joint names'),
])
def test_bad_joint_states_are_named(names, positions, velocities, message):
    with pytest.raises(ValueError, match=message):
        load_profile(PROFILE).observation_from_joint_state(names, positions, velocities)


def test_plan_body_positions_follow_the_planned_states():
    profile = load_profile(PROFILE)
    env = make_env(profile.env_id)
    states = np.array([[0.5, -0.5, 0.0, 0.0], [1.0, 0.25, 1.0, 0.0]])
    positions = Kinematics(profile, env.unwrapped.model).body_positions(states)
    assert np.allclose(positions[:, :2], states[:, :2])


def test_profile_errors(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: x\nenv_id: y\nobservation: []\nactuators: [a]\ncolour: red\n')
    with pytest.raises(ValueError, match='colour'):
        load_profile(bad)
    bad.write_text('name: x\nenv_id: y\nobservation: [{joint: a, field: torque}]\n'
                   'actuators: [a]\n')
    with pytest.raises(ValueError, match='torque'):
        load_profile(bad)


@pytest.mark.parametrize('name', ['hopper', 'walker2d'])
def test_locomotion_profiles_rebuild_the_gymnasium_observation_with_clipped_velocities(name):
    profile = load_profile(name)
    env = make_env(profile.env_id)
    env.reset(seed=0)
    model, data = env.unwrapped.model, env.unwrapped.data
    rng = np.random.default_rng(1)
    for _ in range(10):
        env.step(env.action_space.sample())
        data.qvel[:] = 15.0 * rng.standard_normal(model.nv)  # some beyond the env's clip of 10
        expected = env.unwrapped._get_obs()
        joint_state = profile.joint_state_from_mujoco(model, data)
        vector = profile.observation_from_joint_state(*joint_state)
        assert np.allclose(vector, expected, atol=1e-12)
    # Command order is MuJoCo's actuator order.
    actuated = [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)]
    assert profile.actuators == actuated
    assert profile.control_period_s == pytest.approx(env.unwrapped.dt)


def test_a_negative_observation_clip_is_refused(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: x\nenv_id: y\nobservation: [{joint: a, field: velocity, clip: -1}]\n'
                   'actuators: [a]\n')
    with pytest.raises(ValueError, match='clip of joint .a. must be >= 0'):
        load_profile(bad)
