"""Networks: the autoregressive prior, the temporal U-Net, the inverse dynamics. No I/O."""

from diffusion_planner_ros.models.inverse_dynamics import InverseDynamics
from diffusion_planner_ros.models.prior import TrajectoryPrior
from diffusion_planner_ros.models.unet import TemporalUnet

__all__ = ['InverseDynamics', 'TemporalUnet', 'TrajectoryPrior']
