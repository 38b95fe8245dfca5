"""Robot profiles: JointState -> observation by joint name, equal to the gymnasium observation."""

import numpy as np
import pytest

from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.robots import (dims_mismatch, JointPositionDrawing, Kinematics,
                                          load_profile, profile_from_dict, profile_mismatch,
                                          robot_world)
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


NO_SIM = {'name': 'my_ball', 'observation': [{'joint': 'ball_x', 'field': 'position'},
                                             {'joint': 'ball_y', 'field': 'position'},
                                             {'joint': 'ball_x', 'field': 'velocity'},
                                             {'joint': 'ball_y', 'field': 'velocity'}],
          'actuators': ['ball_x', 'ball_y'], 'control_period_s': 0.01,
          'maze_map': [[1, 1, 1], [1, 0, 1], [1, 1, 1]], 'maze_cell_m': 2.0}


def test_a_robot_without_a_simulator_has_its_own_map_and_draws_its_joint_positions():
    profile = profile_from_dict(NO_SIM, 'test')
    assert profile.env_id == ''
    grid, drawing = robot_world(profile)
    assert isinstance(drawing, JointPositionDrawing)
    assert grid.is_free(np.array([0.0, 0.0])) and not grid.is_free(np.array([2.5, 0.0]))
    states = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert np.array_equal(drawing.body_positions(states), [[1, 2, 0], [5, 6, 0]])


def test_a_robot_without_a_simulator_may_bring_a_mujoco_model(tmp_path):
    import shutil

    source = REPO / 'config' / 'robots' / 'hopper.yaml'
    env = make_env('Hopper-v5')
    xml = env.unwrapped.fullpath
    env.close()
    shutil.copy(xml, tmp_path / 'hopper.xml')
    text = source.read_text().replace('env_id: Hopper-v5', 'model_file: hopper.xml')
    (tmp_path / 'robot.yaml').write_text(text)
    profile = load_profile(tmp_path / 'robot.yaml')
    assert profile.model_file == str(tmp_path / 'hopper.xml')
    grid, drawing = robot_world(profile)
    reference = Kinematics(load_profile(source), make_env('Hopper-v5').unwrapped.model)
    states = np.random.default_rng(0).normal(0, 0.1, (5, 11))
    assert grid is None and np.allclose(drawing.body_positions(states),
                                        reference.body_positions(states))
    (tmp_path / 'broken.yaml').write_text(text.replace('hopper.xml', 'missing.xml'))
    with pytest.raises(ValueError, match='cannot read model_file'):
        robot_world(load_profile(tmp_path / 'broken.yaml'))


@pytest.mark.parametrize('change, message', [
    ({'env_id': 'PointMaze_UMaze-v3'}, 'model_file and maze_map are for robots without env_id'),
    ({'maze_map': [[1, 0], [1]]}, 'rows of equal length'),
    ({'maze_cell_m': 0.0}, 'maze_cell_m must be > 0'),
    ({'colour': 'red'}, r"unknown key\(s\) \['colour'\]"),
])
def test_bad_profiles_without_a_simulator_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        profile_from_dict({**NO_SIM, **change}, 'my_ball.yaml')


def test_a_profile_round_trips_and_mismatches_name_both_sides():
    shipped = load_profile('pointmaze_umaze')
    assert profile_from_dict(shipped.to_dict(), 'dict') == shipped
    assert profile_mismatch(profile_from_dict(NO_SIM, 'x'), shipped) == ''
    other = load_profile('pointmaze_medium')
    assert profile_mismatch(other, shipped) == (
        "env 'PointMaze_Medium-v3' against 'PointMaze_UMaze-v3'")
    swapped = profile_from_dict({**NO_SIM, 'actuators': ['ball_y', 'ball_x']}, 'x')
    assert profile_mismatch(swapped, shipped) == (
        "actuators ['ball_y', 'ball_x'] against ['ball_x', 'ball_y']")
    assert dims_mismatch(shipped, 4, 2) == ''
    assert '4 observation entries and 2 actuators, the model 11 and 3' in dims_mismatch(
        shipped, 11, 3)


def test_shipped_bundles_record_their_robot():
    from diffusion_planner_ros.planning import load_bundle

    for name in ('pointmaze_umaze', 'pointmaze_medium', 'hopper'):
        assert load_bundle(REPO / 'models' / name).robot == load_profile(name)


def test_a_node_plans_for_the_bundles_robot_unless_a_fitting_profile_is_given(tmp_path):
    from diffusion_planner_ros.planning import load_bundle, load_planner
    from diffusion_planner_ros.planning.defaults import bundle_robot

    umaze, hopper = load_bundle(REPO / 'models' / 'pointmaze_umaze'), load_bundle(
        REPO / 'models' / 'hopper')
    assert bundle_robot(umaze) == load_profile('pointmaze_umaze')
    assert bundle_robot(umaze, 'pointmaze_umaze') == load_profile('pointmaze_umaze')
    with pytest.raises(ValueError, match="does not fit bundle .*pointmaze_umaze 'pointmaze_umaze"
                                         "': env 'PointMaze_Medium-v3'"):
        bundle_robot(umaze, 'pointmaze_medium')
    (tmp_path / 'map.yaml').write_text((REPO / 'config' / 'robots' / 'hopper.yaml').read_text()
                                       .replace('env_id: Hopper-v5', 'maze_map: [[1, 0]]'))
    with pytest.raises(ValueError, match='gives a maze_map, but bundle .* plans for returns'):
        bundle_robot(hopper, str(tmp_path / 'map.yaml'))
    # A loaded bundle builds its planner without being read again.
    assert load_planner(umaze, backend='eager').bundle is umaze
