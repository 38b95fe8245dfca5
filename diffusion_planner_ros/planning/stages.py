"""The planners' work as pure tensor functions, the unit the fast paths capture.

Trajectory Diffuser's plan is three stages (prior, refine, inverse); Decision Diffuser's is two
(sample, inverse). With candidates, RankStage picks one plan before inverse dynamics.

Each stage is an nn.Module whose forward takes and returns tensors only, with every planner knob
(horizon, k, w, noise scale) fixed at construction and the sampler's noise passed in as a tensor.
Called directly they are the eager path; planning/accelerate.py replays the same modules as a
CUDA graph or an ONNX Runtime session, so every path runs the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_planner_ros.diffusion import DDPMSchedule, refine, sample


class PriorStage(nn.Module):
    """Algorithm 1, lines 8-12: roll the prior out to a plan of ``horizon`` states."""

    def __init__(self, prior: nn.Module, horizon: int, hold_condition: bool):
        super().__init__()
        self.prior, self.horizon, self.hold_condition = prior, horizon, hold_condition

    def extra_repr(self) -> str:
        """Show the settings fixed in the stage (they key its captures)."""
        return f'horizon={self.horizon}, hold_condition={self.hold_condition}'

    def forward(self, states: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """History (1, h, obs_dim), (1, h, cond_dim) -> plan (1, H, obs_dim) from the state now."""
        rolled, _ = self.prior.rollout(states, conditions, self.horizon - 1, self.hold_condition)
        return torch.cat([states[:, -1:], rolled], dim=1)


class RefineStage(nn.Module):
    """Algorithm 1, lines 14-22: noise the plan to level k and denoise it with guidance.

    The plan's first state (the state now) is written in before every step; with a goal row
    (normalised, NaN in free dimensions) the last state's goal dimensions are too.
    """

    def __init__(self, diffuser: nn.Module, schedule: DDPMSchedule, steps: int,
                 guidance_scale: float, noise_scale: float):
        super().__init__()
        self.diffuser, self.schedule = diffuser, schedule
        self.steps, self.guidance_scale, self.noise_scale = steps, guidance_scale, noise_scale

    def extra_repr(self) -> str:
        """Show the settings fixed in the stage (they key its captures)."""
        return (f'steps={self.steps}, guidance_scale={self.guidance_scale}, '
                f'noise_scale={self.noise_scale}, schedule={self.schedule.config}')

    def forward(self, plan: torch.Tensor, condition: torch.Tensor, draws: torch.Tensor,
                goal_row: torch.Tensor | None = None) -> torch.Tensor:
        """Refine plan (1, H, obs) under condition (1, cond) with draws (k, 1, H, obs)."""
        constraints = {0: plan[0, 0]}
        if goal_row is not None:
            constraints[plan.shape[1] - 1] = goal_row
        return refine(self.diffuser, self.schedule, plan, self.steps, condition,
                      self.guidance_scale, constraints, noise_scale=self.noise_scale, draws=draws)


class SampleStage(nn.Module):
    """Decision Diffuser: sample a plan from pure noise over the K levels with guidance.

    The plan's first state is the state now; a goal row fixes the last state's goal dimensions.
    steps > 0 visits that many of the K levels, evenly strided; 0 visits all.
    """

    def __init__(self, diffuser: nn.Module, schedule: DDPMSchedule, guidance_scale: float,
                 noise_scale: float, steps: int = 0):
        super().__init__()
        self.diffuser, self.schedule = diffuser, schedule
        self.guidance_scale, self.noise_scale, self.steps = guidance_scale, noise_scale, steps

    def extra_repr(self) -> str:
        """Show the settings fixed in the stage (they key its captures)."""
        return (f'guidance_scale={self.guidance_scale}, noise_scale={self.noise_scale}, '
                f'steps={self.steps}, schedule={self.schedule.config}')

    def forward(self, state: torch.Tensor, condition: torch.Tensor, draws: torch.Tensor,
                goal_row: torch.Tensor | None = None) -> torch.Tensor:
        """Sample a plan (1, H, obs) from state (obs,), condition (1, cond), draws (K, ...)."""
        constraints = {0: state}
        if goal_row is not None:
            constraints[draws.shape[2] - 1] = goal_row
        return sample(self.diffuser, self.schedule, draws.shape[1:], condition,
                      self.guidance_scale, constraints, noise_scale=self.noise_scale,
                      device=draws.device, draws=draws, steps=self.steps)


class RankStage(nn.Module):
    """Pick the candidate plan the critic scores highest (the official TD code's reranking)."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic

    def forward(self, plans: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Map plans (N, H, obs) under condition (N, cond) to the best one, (1, H, obs)."""
        levels = torch.zeros(plans.shape[0], dtype=torch.long, device=plans.device)
        best = self.critic(plans, levels, condition).argmax().reshape(1)  # (1,)
        return plans.index_select(0, best)


class InverseStage(nn.Module):
    """Algorithm 1, lines 24-25: actions between the first ``count`` pairs of planned states."""

    def __init__(self, inverse_dynamics: nn.Module, count: int):
        super().__init__()
        self.inverse_dynamics, self.count = inverse_dynamics, count

    def extra_repr(self) -> str:
        """Show the settings fixed in the stage (they key its captures)."""
        return f'count={self.count}'

    def forward(self, plan: torch.Tensor) -> torch.Tensor:
        """Map plan (1, H, obs_dim) to actions (count, action_dim)."""
        return self.inverse_dynamics(plan[0, :self.count], plan[0, 1:self.count + 1])
