"""The launch file against setup.py, the params YAML and the topics the nodes really use."""

import ast
import re

import pytest
import yaml

from diffusion_planner_ros.launch_file import LaunchFileError, read_launch_file
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


def node_topics(source) -> set:
    text = source.read_text()
    pattern = r"create_(?:lifecycle_publisher|publisher|subscription)\(\s*\w+,\s*'([^']+)'"
    return set(re.findall(pattern, text))


def declared_parameters(source) -> set:
    text = source.read_text()
    return set(re.findall(r"(?:declare_parameter|\bp)\(\s*'([^']+)'", text))


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


def test_params_file_keys_match_node_names_and_declared_parameters(launch):
    args, nodes = launch
    params = yaml.safe_load((REPO / args['params'].replace(str(REPO) + '/', '')).read_text())
    ours = {n.name: n for n in nodes if n.package == 'diffusion_planner_ros'}
    assert set(params) == set(ours)
    for name, node in ours.items():
        assert node.params_files and all(p.endswith('sim_params.yaml') for p in node.params_files)
        declared = declared_parameters(NODE_SOURCES[name])
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


def test_launch_arguments_reach_the_nodes():
    _, nodes = read_launch_file(LAUNCH, REPO, {'use_sim': 'false', 'state_topic': '/drv/js',
                                               'command_topic': '/drv/cmd'})
    by_name = {n.name: n for n in nodes}
    assert not by_name['sim_bridge_node'].enabled
    remaps = dict(by_name['planner_node'].remappings)
    assert remaps['joint_states'] == '/drv/js' and remaps['commands'] == '/drv/cmd'
    with pytest.raises(LaunchFileError, match='unknown launch argument'):
        read_launch_file(LAUNCH, REPO, {'use_sims': 'false'})


def test_installed_data_files_cover_what_the_launch_file_finds():
    setup = (REPO / 'setup.py').read_text()
    for folder in ("glob('launch/*.py')", "tree('config')", "tree('models')"):
        assert folder in setup
    args, _ = read_launch_file(LAUNCH, REPO)
    for key in ('profile', 'bundle', 'params'):
        assert (REPO / args[key].replace(str(REPO) + '/', '')).exists(), key
    assert (REPO / 'config' / 'sim.rviz').is_file()
