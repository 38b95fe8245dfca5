"""The planner facade and the bundle that rebuilds it from a path."""

from diffusion_planner_ros.planning.bundle import Bundle, load_bundle, save_bundle
from diffusion_planner_ros.planning.planner import Plan, TrajectoryDiffuserPlanner

__all__ = ['Bundle', 'Plan', 'TrajectoryDiffuserPlanner', 'load_bundle', 'save_bundle']
