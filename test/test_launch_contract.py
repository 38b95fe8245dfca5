"""The launch file against setup.py, the params YAML and the topics the nodes really use."""

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from diffusion_planner_ros.launch_file import LaunchFileError, read_launch_file
from diffusion_planner_ros.robots import load_profile
from conftest import REPO

LAUNCH = REPO / 'launch' / 'sim.launch.py'
NODE_SOURCES = {
    'planner_node': REPO / 'diffusion_planner_ros' / 'nodes' / 'planner_node.py',
    'sim_bridge_node': REPO / 'diffusion_planner_ros' / 'nodes' / 'sim_bridge_node.py',
}


def console_scripts() -> dict:
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ' = ' in node.value:
            name, target = node.value.split(' = ')
            scripts[name.strip()] = target.strip()
    return scripts


RUNNER = REPO / 'diffusion_planner_ros' / 'nodes' / 'runner.py'


def node_topics(source) -> set:
    text = source.read_text()
    pattern = (r"(?:create_(?:lifecycle_publisher|publisher|subscription)\(|"
               r"subscribe_with_info\(\s*self,)\s*\w+,\s*'([^']+)'")
    return set(re.findall(pattern, text))


def declared_parameters(source) -> set:
    text = source.read_text()
    # A node that calls declare_executor declares what runner.py's declare_parameter names.
    shared = declared_parameters(RUNNER) if 'declare_executor(self)' in text else set()
    return set(re.findall(r"(?:declare_parameter|\bp)\(\s*'([^']+)'", text)) | shared


@pytest.fixture
def launch():
    return read_launch_file(LAUNCH, REPO)


def test_every_node_runs_an_installed_console_script(launch):
    _, nodes = launch
    scripts = console_scripts()
    ours = [n for n in nodes if n.package == 'diffusion_planner_ros']
    assert {n.executable for n in ours} == {'planner_node', 'sim_bridge_node'}
    for node in ours:
        module, function = scripts[node.executable].split(':')
        assert (REPO / (module.replace('.', '/') + '.py')).is_file()
        assert f'def {function}(' in (REPO / (module.replace('.', '/') + '.py')).read_text()


ROBOTS = sorted(p.stem for p in (REPO / 'config' / 'sim').glob('*.yaml'))


def test_every_shipped_robot_has_profile_bundle_and_params():
    assert set(ROBOTS) >= {'pointmaze_umaze', 'hopper'}
    for robot in ROBOTS:
        assert (REPO / 'config' / 'robots' / f'{robot}.yaml').is_file(), robot
        assert (REPO / 'models' / robot / 'config.json').is_file(), robot


@pytest.mark.parametrize('robot', ROBOTS)
def test_params_file_keys_match_node_names_and_declared_parameters(robot):
    args, nodes = read_launch_file(LAUNCH, REPO, {'robot': robot})
    params = yaml.safe_load((REPO / args['params'].replace(str(REPO) + '/', '')).read_text())
    ours = {n.name: n for n in nodes if n.package == 'diffusion_planner_ros'}
    assert set(params) == set(ours)
    for name, node in ours.items():
        assert node.params_files == [str(REPO / 'config' / 'sim' / f'{robot}.yaml')]
        # rclpy declares use_sim_time on every node.
        declared = declared_parameters(NODE_SOURCES[name]) | {'use_sim_time'}
        given = set(params[name]['ros__parameters']) | set(node.parameters)
        assert given <= declared, given - declared


def test_remappings_name_topics_the_nodes_use(launch):
    _, nodes = launch
    for node in nodes:
        if node.package != 'diffusion_planner_ros':
            continue
        used = node_topics(NODE_SOURCES[node.name])
        for source, _ in node.remappings:
            assert source in used, f'{node.name} remaps {source!r} but uses {sorted(used)}'
        assert {'joint_states', 'commands'} <= {s for s, _ in node.remappings}
    # A topic both nodes remap (state, commands, reward, episode_end) meets on one name.
    ours = [dict(n.remappings) for n in nodes if n.package == 'diffusion_planner_ros']
    for topic in set(ours[0]) & set(ours[1]):
        assert ours[0][topic] == ours[1][topic], topic


def test_launch_arguments_reach_the_nodes():
    _, nodes = read_launch_file(LAUNCH, REPO, {'use_sim': 'false', 'state_topic': '/drv/js',
                                               'command_topic': '/drv/cmd'})
    by_name = {n.name: n for n in nodes}
    assert not by_name['sim_bridge_node'].enabled
    # One clock per graph: the wall clock with a robot, the bridge's /clock with the bridge.
    assert by_name['planner_node'].parameters['use_sim_time'] == 'false'
    _, nodes = read_launch_file(LAUNCH, REPO)
    assert {n.name: n for n in nodes}['planner_node'].parameters['use_sim_time'] == 'true'
    remaps = dict(by_name['planner_node'].remappings)
    assert remaps['joint_states'] == '/drv/js' and remaps['commands'] == '/drv/cmd'
    with pytest.raises(LaunchFileError, match='unknown launch argument'):
        read_launch_file(LAUNCH, REPO, {'use_sims': 'false'})


def test_robot_argument_picks_files_by_name_and_each_can_be_overridden():
    args, _ = read_launch_file(LAUNCH, REPO, {'robot': 'hopper'})
    assert args['profile'] == str(REPO / 'config' / 'robots' / 'hopper.yaml')
    assert args['bundle'] == str(REPO / 'models' / 'hopper')
    assert args['params'] == str(REPO / 'config' / 'sim' / 'hopper.yaml')
    args, nodes = read_launch_file(LAUNCH, REPO, {'robot': 'hopper', 'bundle': '/my/bundle'})
    planner = next(n for n in nodes if n.name == 'planner_node')
    assert planner.parameters['bundle'] == '/my/bundle'
    assert planner.parameters['profile'].endswith('hopper.yaml')


@pytest.mark.parametrize('robot', ROBOTS)
def test_installed_data_files_cover_what_the_launch_file_finds(robot):
    setup = (REPO / 'setup.py').read_text()
    for folder in ("glob('launch/*.py')", "tree('config')", "tree('models')"):
        assert folder in setup
    args, _ = read_launch_file(LAUNCH, REPO, {'robot': robot})
    for key in ('profile', 'bundle', 'params'):
        assert (REPO / args[key].replace(str(REPO) + '/', '')).exists(), key
    assert args['rviz_config'] == str(REPO / 'config' / 'rviz' / f'{robot}.rviz')
    assert (REPO / 'config' / 'rviz' / f'{robot}.rviz').is_file()
    # The robot's bundle was trained for its profile's env and commands its actuators.
    profile = load_profile(args['profile'])
    meta = json.loads((Path(args['bundle']) / 'config.json').read_text())
    assert meta['env_id'] == profile.env_id
    assert meta['dims']['action'] == len(profile.actuators)


def test_a_list_inside_path_join_is_refused_as_older_jazzy_launch_does(tmp_path):
    # launch < 3.4.5 (early Jazzy) fails on a list inside PathJoinSubstitution before any
    # node starts; the runner refuses it too, so the shipped file cannot come to rely on it.
    text = LAUNCH.read_text()
    assert "LaunchConfiguration('robot')]), '.yaml']" in text
    old = text.replace("LaunchConfiguration('robot')]), '.yaml']",
                       "[LaunchConfiguration('robot'), '.yaml']])", 1).replace(
        'default_value=[PathJoinSubstitution(', 'default_value=PathJoinSubstitution(', 1)
    (tmp_path / 'old.launch.py').write_text(old)
    with pytest.raises(LaunchFileError, match='list inside PathJoinSubstitution'):
        read_launch_file(tmp_path / 'old.launch.py', REPO)


# Python imports of the package and its scripts -> rosdep keys. minari, safetensors and onnx
# have no rosdep key: the README's workspace section installs them with pip.
ROSDEP_KEYS = {
    'numpy': 'python3-numpy', 'yaml': 'python3-yaml', 'torch': 'python3-torch',
    'mujoco': 'python3-mujoco-pip', 'gymnasium': 'python3-gymnasium-pip',
    'gymnasium_robotics': 'python3-gymnasium-robotics-pip',
    'onnxruntime': 'python3-onnxruntime-pip', 'h5py': 'python3-h5py', 'tqdm': 'python3-tqdm',
    'matplotlib': 'python3-matplotlib', 'rosbags': 'python3-rosbags-pip',
    'stable_baselines3': 'python3-stable-baselines3-pip'}
PIP_ONLY = {'minari', 'safetensors', 'onnx'}


def imported_modules() -> set:
    names = set()
    for folder in ('diffusion_planner_ros', 'training'):
        for path in (REPO / folder).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split('.')[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split('.')[0])
    return names


def test_package_xml_declares_what_the_package_imports_and_starts(launch):
    root = ET.parse(REPO / 'package.xml').getroot()
    depends = {e.text for e in root if e.tag == 'exec_depend'}
    imported = imported_modules()
    ros = {n for n in imported
           if n == 'rclpy' or n.endswith(('_msgs', '_srvs', '_interfaces'))}
    assert ros <= depends, f'package.xml lacks {sorted(ros - depends)}'
    started = {n.package for n in launch[1]} - {'diffusion_planner_ros'}
    assert started <= depends, f'package.xml lacks {sorted(started - depends)}'
    keys = {ROSDEP_KEYS[n] for n in imported if n in ROSDEP_KEYS}
    assert keys <= depends, f'package.xml lacks {sorted(keys - depends)}'
    readme = (REPO / 'README.md').read_text()
    for name in PIP_ONLY & imported:
        assert name in readme.split('### Without ROS installed')[0], name
    assert root.find('license').text == 'Apache-2.0'
    assert 'Apache License' in (REPO / 'LICENSE').read_text()
