"""Shared fixtures: every test gets its own Minari folder and TMPDIR (maze envs write XML)."""

import itertools
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """Point MINARI_DATASETS_PATH and TMPDIR inside the test's temporary folder."""
    datasets = tmp_path / 'datasets'
    scratch = tmp_path / 'tmp'
    datasets.mkdir()
    scratch.mkdir()
    monkeypatch.setenv('MINARI_DATASETS_PATH', str(datasets))
    monkeypatch.setenv('TMPDIR', str(scratch))
    return tmp_path


def script_env(tmp_path) -> dict:
    """Environment for running the training scripts in a subprocess."""
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['MINARI_DATASETS_PATH'] = str(tmp_path / 'datasets')
    env['TMPDIR'] = str(tmp_path / 'tmp')
    return env


PYTHON = sys.executable


# Each ROS test of a session gets the next domain (from a random start), so no test meets the
# participants of an earlier one (killed nodes linger in discovery for a while).
_DOMAINS = itertools.count(random.randrange(100))


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """A private ROS domain on localhost for this test and the processes it starts."""
    domain = str(1 + next(_DOMAINS) % 100)
    monkeypatch.setenv('ROS_DOMAIN_ID', domain)
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env = script_env(tmp_path)
    env['ROS_DOMAIN_ID'] = domain
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PATH'] = os.path.dirname(PYTHON) + os.pathsep + env.get('PATH', '')
    return env


@pytest.fixture
def driver(ros_env):
    """A FakeDriver node (ros_helpers) and its executor, in the test's ROS domain."""
    rclpy = pytest.importorskip('rclpy')
    from rclpy.executors import SingleThreadedExecutor
    from ros_helpers import FakeDriver

    rclpy.init()
    node = FakeDriver(seed=1001)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    yield node, executor
    node.destroy_node()
    rclpy.try_shutdown()
