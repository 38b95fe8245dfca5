"""DMEMM's environment models: a Gaussian ensemble for transitions and a bounded reward model.

Both work in normalised units. The ensemble predicts the change of state; members differ by
their initialisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from diffusion_planner_ros.config import DynamicsConfig


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """Build an MLP with ``layers`` ReLU hidden layers."""
    modules, width = [], in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class GaussianEnsemble(nn.Module):
    """T(s' | s, a) = N(s + mu_e(s, a), diag sigma_e(s, a)^2) for members e = 1 .. E."""

    def __init__(self, config: DynamicsConfig, obs_dim: int, action_dim: int):
        super().__init__()
        self.obs_dim = obs_dim
        self.members = nn.ModuleList(
            mlp(obs_dim + action_dim, 2 * obs_dim, config.hidden_dim, config.n_hidden)
            for _ in range(config.ensemble_size))
        # Soft bounds on the log standard deviation (PETS-style), learned.
        self.max_logstd = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logstd = nn.Parameter(torch.full((obs_dim,), -10.0))

    def forward(self, state: torch.Tensor, action: torch.Tensor):
        """(..., obs), (..., act) -> next-state means and log-stds, each (E, ..., obs)."""
        inputs = torch.cat([state, action], dim=-1)
        outputs = torch.stack([member(inputs) for member in self.members])
        delta, logstd = outputs.split(self.obs_dim, dim=-1)
        logstd = self.max_logstd - nn.functional.softplus(self.max_logstd - logstd)
        logstd = self.min_logstd + nn.functional.softplus(logstd - self.min_logstd)
        return state + delta, logstd

    def log_prob(self, state: torch.Tensor, action: torch.Tensor,
                 next_state: torch.Tensor) -> torch.Tensor:
        """Return log T(s' | s, a), averaged over members and summed over state dims: (...)."""
        mean, logstd = self(state, action)
        z = (next_state - mean) / logstd.exp()
        per_dim = -0.5 * z.pow(2) - logstd - 0.5 * math.log(2 * math.pi)
        return per_dim.sum(-1).mean(0)

    def predict(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mean next state over members: (..., obs)."""
        return self(state, action)[0].mean(0)

    def numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the members' layers as (weights (E, in, out), biases (E, 1, out)) arrays.

        For numpy_predict: a copy of the weights, so take it again after they change.
        """
        layers = [[module for module in member if isinstance(module, nn.Linear)]
                  for member in self.members]
        return [(np.stack([member[i].weight.detach().cpu().numpy().T for member in layers]),
                 np.stack([member[i].bias.detach().cpu().numpy()[None] for member in layers]))
                for i in range(len(layers[0]))]

    def numpy_predict(self, layers: list, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        """predict() for one state (obs,) and action (act,) in numpy, from numpy_layers().

        Small numpy products never release the GIL, so a planner's other thread cannot hold up
        a caller that has to answer within a control period.
        """
        hidden = np.concatenate([state, action])[None].astype(np.float32)
        for index, (weights, biases) in enumerate(layers):
            hidden = hidden @ weights + biases
            if index < len(layers) - 1:
                hidden = np.maximum(hidden, 0.0)
        return state + hidden[:, 0, :self.obs_dim].mean(0)

    def nll(self, state: torch.Tensor, action: torch.Tensor,
            next_state: torch.Tensor) -> torch.Tensor:
        """Training loss: Gaussian NLL of every member, plus a small pull on the log-std bounds."""
        mean, logstd = self(state, action)
        z = (next_state - mean) / logstd.exp()
        loss = (0.5 * z.pow(2) + logstd).mean()
        return loss + 0.01 * (self.max_logstd.sum() - self.min_logstd.sum())


class RewardModel(nn.Module):
    """R(s, a, condition) -> (...,) the per-step reward scaled into the data's range [0, 1].

    The output is bounded (a sigmoid, ``config.reward_head``), as its target is. DMEMM's reward
    modulation and guide raise R along the trajectory; an unbounded head rewards leaving the
    data, where a linear output grows without limit, and the noise model learns to go there
    instead of denoising. 'linear' keeps the bundles trained before the bounded head as they were.
    """

    def __init__(self, config: DynamicsConfig, obs_dim: int, action_dim: int, cond_dim: int):
        super().__init__()
        self.net = mlp(obs_dim + action_dim + cond_dim, 1, config.hidden_dim, config.n_hidden)
        self.bounded = config.reward_head == 'sigmoid'

    def forward(self, state: torch.Tensor, action: torch.Tensor,
                condition: torch.Tensor) -> torch.Tensor:
        """(..., obs), (..., act), (..., cond) -> (...), in (0, 1) when bounded."""
        reward = self.net(torch.cat([state, action, condition], dim=-1)).squeeze(-1)
        return torch.sigmoid(reward) if self.bounded else reward
