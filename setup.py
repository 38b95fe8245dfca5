"""Install diffusion_planner_ros as an ament_python package or a plain pip package."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'diffusion_planner_ros'


def tree(directory):
    """List (install dir, files) pairs for every folder below directory."""
    pairs = []
    for root, _, files in os.walk(directory):
        paths = [os.path.join(root, f) for f in files if not f.startswith('.')]
        if paths:
            pairs.append((os.path.join('share', package_name, root), paths))
    return pairs


ROS_WHEELS = [
    'ros-jazzy-rclpy',
    'ros-jazzy-rmw-fastrtps-cpp',
    'ros-jazzy-std-msgs',
    'ros-jazzy-sensor-msgs',
    'ros-jazzy-nav-msgs',
    'ros-jazzy-geometry-msgs',
    'ros-jazzy-visualization-msgs',
    'ros-jazzy-trajectory-msgs',
    'ros-jazzy-diagnostic-msgs',
    'ros-jazzy-rosgraph-msgs',
    'ros-jazzy-std-srvs',
    'ros-jazzy-lifecycle-msgs',
]

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        *tree('config'),
        *tree('models'),
    ],
    python_requires='>=3.10',
    install_requires=[
        # The Makefile installs the CPU build of torch first on machines without CUDA, so this
        # requirement is already met there and pip never pulls the CUDA packages.
        'torch>=2.2',
        'numpy',
        'mujoco>=3.0',
        'gymnasium>=1.0',
        'gymnasium-robotics>=1.3',
        'minari[hdf5]>=0.5',
        'pyyaml',
        'safetensors',
        'tqdm',
        'matplotlib',
    ],
    extras_require={
        'ros': ROS_WHEELS,
        # colcon: the workspace build test (test/test_colcon_build.py), as a ROS user builds.
        'dev': ['pytest', 'pytest-xdist', 'flake8', 'pydocstyle', 'colcon-core', 'colcon-ros'],
        # The faster CPU path: the planner's stages exported to ONNX and run by ONNX Runtime.
        'fast': ['onnx>=1.16', 'onnxruntime>=1.18'],
        # training/bag_to_minari.py: ROS 2 bags (MCAP, sqlite3) read without a ROS install.
        'bags': ['rosbags>=0.10'],
        # training/train_behavior.py: SAC behavior policies for the locomotion datasets.
        'data': ['stable-baselines3>=2.3'],
    },
    zip_safe=True,
    maintainer='diffusion_planner_ros maintainers',
    maintainer_email='maintainers@diffusion-planner-ros.invalid',
    description='Trajectory Diffuser as a ROS 2 receding-horizon planner.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'planner_node = diffusion_planner_ros.nodes.planner_node:main',
            'sim_bridge_node = diffusion_planner_ros.nodes.sim_bridge_node:main',
            'sim_graph = diffusion_planner_ros.nodes.demo.sim_graph:main',
        ],
    },
)
