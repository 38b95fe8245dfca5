"""launch_testing of sim.launch.py, for machines with a sourced ROS 2 install.

launch_ros has no wheel for machines without ROS, so this is skipped there; the contract test
and the launch-equivalent runner (test_launch_contract.py, test_ros_integration.py) cover the
launch file on those machines.
"""

import pytest

launch_ros = pytest.importorskip('launch_ros')
launch_testing = pytest.importorskip('launch_testing')

import launch  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from conftest import REPO  # noqa: E402


def test_sim_launch_file_loads_and_declares_its_arguments():
    source = PythonLaunchDescriptionSource(str(REPO / 'launch' / 'sim.launch.py'))
    description = source.get_launch_description(launch.LaunchContext())
    names = {a.name for a in description.get_launch_arguments()}
    assert {'robot', 'profile', 'bundle', 'params', 'use_sim', 'use_rviz', 'state_topic',
            'command_topic'} <= names
    nodes = [e for e in description.entities if isinstance(e, launch_ros.actions.Node)]
    assert len(nodes) == 3
