"""Robot profiles: joint names -> observation vector, actuators -> command vector."""

from diffusion_planner_ros.robots.profile import (
    dims_mismatch, JointPositionDrawing, Kinematics, load_profile, profile_for, profile_from_dict,
    profile_mismatch, robot_world, RobotProfile)

__all__ = ['dims_mismatch', 'JointPositionDrawing', 'Kinematics', 'RobotProfile', 'load_profile',
           'profile_for', 'profile_from_dict', 'profile_mismatch', 'robot_world']
