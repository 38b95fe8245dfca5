"""Inverse dynamics a_t = f(s_t, s_t+1) (paper Eq. 3), in normalised units."""

from __future__ import annotations

import numpy as np
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

    def numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the layers as (weights (in, out), biases (out,)) arrays, for numpy_forward."""
        return [(layer.weight.detach().cpu().numpy().T, layer.bias.detach().cpu().numpy())
                for layer in self.net if isinstance(layer, nn.Linear)]

    @staticmethod
    def numpy_forward(layers: list, state: np.ndarray, next_state: np.ndarray) -> np.ndarray:
        """forward() for one pair (obs,) x2 in numpy: no GIL release, no torch dispatch."""
        hidden = np.concatenate([state, next_state]).astype(np.float32)
        for index, (weights, biases) in enumerate(layers):
            hidden = hidden @ weights + biases
            if index < len(layers) - 1:
                hidden = np.maximum(hidden, 0.0)
        return hidden
