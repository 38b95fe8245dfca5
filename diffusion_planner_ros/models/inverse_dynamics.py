"""Inverse dynamics a_t = f(s_t, s_t+1) (paper Eq. 3), in normalised units."""

from __future__ import annotations

import torch
from torch import nn

from diffusion_planner_ros.config import InverseDynamicsConfig


class InverseDynamics(nn.Module):
    """MLP with ReLU hidden layers; the planner clamps its output to the action bounds."""

    def __init__(self, config: InverseDynamicsConfig, obs_dim: int, action_dim: int):
        super().__init__()
        layers, width = [], 2 * obs_dim
        for _ in range(config.n_hidden):
            layers += [nn.Linear(width, config.hidden_dim), nn.ReLU()]
            width = config.hidden_dim
        layers.append(nn.Linear(width, action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """(..., obs_dim) x2 -> (..., action_dim)."""
        return self.net(torch.cat([state, next_state], dim=-1))
