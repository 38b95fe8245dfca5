"""The package built as a ROS user builds it: colcon in a fresh workspace, then run from there."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from diffusion_planner_ros.launch_file import read_launch_file

PACKAGE = 'diffusion_planner_ros'
SCRIPTS = ('planner_node', 'sim_bridge_node', 'sim_graph')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A workspace with the tracked files of this checkout in src/, built by colcon."""
    if shutil.which('git') is None:
        pytest.skip('git is needed to list the tracked files')
    root = tmp_path_factory.mktemp('ws')
    source = root / 'src' / PACKAGE
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split('\0')
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {**os.environ, 'TMPDIR': str(root)}
    result = subprocess.run([sys.executable, '-m', 'colcon', 'build'], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / 'install' / PACKAGE


def test_colcon_installs_executables_launch_configs_views_and_bundles(workspace):
    share = workspace / 'share' / PACKAGE
    assert (workspace / 'share' / 'ament_index' / 'resource_index' / 'packages'
            / PACKAGE).is_file()
    for script in SCRIPTS:
        path = workspace / 'lib' / PACKAGE / script
        assert os.access(path, os.X_OK), script
        # Scripts run the Python that ran colcon, so they see that Python's packages (torch).
        assert path.read_text().splitlines()[0] == f'#!{sys.executable}'
    assert (share / 'package.xml').is_file()
    for robot in sorted(p.stem for p in (REPO / 'config' / 'sim').glob('*.yaml')):
        args, nodes = read_launch_file(share / 'launch' / 'sim.launch.py', share,
                                       {'robot': robot})
        for key in ('profile', 'params'):
            assert args[key].startswith(str(share)) and os.path.isfile(args[key]), key
        assert (share / 'models' / robot / 'config.json').is_file()
        for node in nodes:
            for argument in node.arguments:
                if str(argument).startswith(str(share)):
                    assert os.path.isfile(argument), argument


def test_installed_nodes_find_the_installed_files(workspace, ros_env):
    env = {**ros_env, 'PYTHONPATH': str(next(workspace.glob('lib/python*/site-packages')))}
    # This venv also holds the checkout as an editable install, whose import hook comes before
    # PYTHONPATH; a workspace's venv has none, so the check leaves the hook out.
    check = ('import sys; sys.meta_path[:] = [f for f in sys.meta_path'
             ' if "__editable__" not in getattr(f, "__module__", "")];'
             'import diffusion_planner_ros.share as s, diffusion_planner_ros.robots as r;'
             'print(s.__file__); print(s.share_directory()); print(r.load_profile("hopper").name)')
    result = subprocess.run([sys.executable, '-c', check], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    module, share, name = result.stdout.split()
    assert module.startswith(str(workspace)) and share == str(workspace / 'share' / PACKAGE)
    assert name == 'hopper'
    # The installed console script starts, and a bad parameter stops it with its name.
    result = subprocess.run(
        [str(workspace / 'lib' / PACKAGE / 'planner_node'), '--ros-args', '-p',
         f'bundle:={workspace / "share" / PACKAGE / "models" / "hopper"}', '-p',
         'profile:=no_such_robot'], cwd=workspace, env=env, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2
    assert 'robot profile no_such_robot does not exist' in result.stdout + result.stderr
