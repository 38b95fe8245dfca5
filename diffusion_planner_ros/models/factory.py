"""Which networks each method is made of, and how to build them from a config."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffusion_planner_ros.config import CRITIC_METHODS, JOINT_METHODS, ExperimentConfig
from diffusion_planner_ros.models.dynamics import GaussianEnsemble, RewardModel
from diffusion_planner_ros.models.inverse_dynamics import InverseDynamics
from diffusion_planner_ros.models.policy import BCPolicy
from diffusion_planner_ros.models.prior import TrajectoryPrior
from diffusion_planner_ros.models.unet import TemporalUnet
from diffusion_planner_ros.models.value import ValueFunction

# Networks per method, in the order they are trained (DMEMM's diffuser needs its environment
# models first).
METHOD_COMPONENTS = {
    'trajectory_diffuser': ('prior', 'diffuser', 'inverse_dynamics'),
    'decision_diffuser': ('diffuser', 'inverse_dynamics'),
    'diffuser': ('diffuser', 'value'),
    'dmemm': ('transition', 'reward', 'diffuser'),
    'bc': ('policy',),
}


def method_components(config: ExperimentConfig, method: str | None = None) -> tuple:
    """Return the networks of ``method`` (default: the config's), with its critic if it has one.

    A Trajectory / Decision Diffuser bundle with method.transition_model also carries the
    transition ensemble that predicts the state a late command acts on.
    """
    method = method or config.method.name
    extra = ('critic',) if config.method.critic and method in CRITIC_METHODS else ()
    if config.method.transition_model and method in CRITIC_METHODS:
        extra = ('transition',) + extra
    return METHOD_COMPONENTS[method] + extra


@dataclass
class Dims:
    """Sizes of the vectors the models exchange."""

    obs: int
    action: int
    condition: int


def build_models(config: ExperimentConfig, dims: Dims,
                 method: str | None = None) -> dict[str, nn.Module]:
    """Fresh networks of ``method`` (default: the config's) for a config and data sizes.

    The joint methods (Diffuser, DMEMM) diffuse [state, action] rows, so their U-Net has
    obs + action channels; the others diffuse states only.
    """
    method = method or config.method.name
    horizon = config.data.horizon
    channels = dims.obs + dims.action if method in JOINT_METHODS else dims.obs
    builders = {
        'prior': lambda: TrajectoryPrior(config.prior, dims.obs, dims.condition,
                                         config.data.history + horizon),
        'diffuser': lambda: TemporalUnet(config.unet, channels, dims.condition, horizon),
        'inverse_dynamics': lambda: InverseDynamics(config.inverse_dynamics, dims.obs,
                                                    dims.action),
        'value': lambda: ValueFunction(config.unet, channels, dims.condition, horizon),
        # The same network on clean state plans: scores candidates at level 0.
        'critic': lambda: ValueFunction(config.unet, dims.obs, dims.condition, horizon),
        'transition': lambda: GaussianEnsemble(config.dynamics, dims.obs, dims.action),
        'reward': lambda: RewardModel(config.dynamics, dims.obs, dims.action, dims.condition),
        'policy': lambda: BCPolicy(config.policy, dims.obs, dims.condition, dims.action),
    }
    return {name: builders[name]() for name in method_components(config, method)}
