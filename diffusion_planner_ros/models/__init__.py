"""Networks: the prior, the temporal U-Net, inverse dynamics and the baselines' models. No I/O."""

from diffusion_planner_ros.models.dynamics import GaussianEnsemble, RewardModel
from diffusion_planner_ros.models.factory import (METHOD_COMPONENTS, Dims, build_models,
                                                  method_components)
from diffusion_planner_ros.models.inverse_dynamics import InverseDynamics
from diffusion_planner_ros.models.policy import BCPolicy
from diffusion_planner_ros.models.prior import TrajectoryPrior
from diffusion_planner_ros.models.unet import TemporalUnet
from diffusion_planner_ros.models.value import ValueFunction

__all__ = ['BCPolicy', 'Dims', 'GaussianEnsemble', 'InverseDynamics', 'METHOD_COMPONENTS',
           'RewardModel', 'TemporalUnet', 'TrajectoryPrior', 'ValueFunction', 'build_models',
           'method_components']
