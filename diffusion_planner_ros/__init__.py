"""diffusion_planner_ros: Trajectory Diffuser as a ROS 2 receding-horizon planner.

The library (everything but ``nodes``) imports no ROS module.
"""

__version__ = '0.1.0'
