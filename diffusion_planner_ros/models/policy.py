"""Behaviour cloning: an MLP policy a = pi(s, condition) in normalised units."""

from __future__ import annotations

import torch
from torch import nn

from diffusion_planner_ros.config import PolicyConfig
from diffusion_planner_ros.models.dynamics import mlp


class BCPolicy(nn.Module):
    """tanh-squashed MLP: normalised actions live in [-1, 1]."""

    def __init__(self, config: PolicyConfig, obs_dim: int, cond_dim: int, action_dim: int):
        super().__init__()
        self.net = mlp(obs_dim + cond_dim, action_dim, config.hidden_dim, config.n_hidden)

    def forward(self, state: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(..., obs), (..., cond) -> (..., act)."""
        return torch.tanh(self.net(torch.cat([state, condition], dim=-1)))
