"""Robot profiles: joint names -> observation vector, actuators -> command vector."""

from diffusion_planner_ros.robots.profile import Kinematics, RobotProfile, load_profile

__all__ = ['Kinematics', 'RobotProfile', 'load_profile']
