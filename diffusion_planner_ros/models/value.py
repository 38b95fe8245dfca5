"""Diffuser's return model J(tau_t, t): the U-Net's down path and a linear head.

It reads noisy trajectories (Diffuser trains J at every diffusion level so that its gradient is
meaningful during sampling) and, for goal tasks, the goal through the same condition embedding
as the U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_planner_ros.config import UnetConfig
from diffusion_planner_ros.models.unet import ResidualTemporalBlock, SinusoidalEmbedding


class ValueFunction(nn.Module):
    """J(x_t, t, condition) -> (B,) predicted normalised return of the clean trajectory."""

    def __init__(self, config: UnetConfig, transition_dim: int, cond_dim: int, horizon: int):
        super().__init__()
        e, hidden = config.embed_dim, config.embed_hidden
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(e), nn.Linear(e, hidden), nn.Mish(), nn.Linear(hidden, e))
        self.cond_mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.Mish(), nn.Linear(hidden, e))
        channels = [transition_dim] + [config.dim * m for m in config.dim_mults]
        block = dict(embed_dim=2 * e, kernel_size=config.kernel_size, groups=config.groups)
        self.blocks = nn.ModuleList()
        length = horizon
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.ModuleList([
                ResidualTemporalBlock(c_in, c_out, **block),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1),
            ]))
            length = (length + 1) // 2
        self.head = nn.Sequential(
            nn.Linear(channels[-1] * length + 2 * e, hidden), nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, k: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Map x (B, H, D), k (B,), condition (B, cond_dim) to (B,)."""
        embedding = torch.cat([self.time_mlp(k), self.cond_mlp(condition)], dim=-1)
        h = x.transpose(1, 2)  # (B, D, H)
        for block, downsample in self.blocks:
            h = downsample(block(h, embedding))
        h = torch.cat([h.flatten(1), embedding], dim=-1)  # (B, C * H' + 2 E)
        return self.head(h).squeeze(-1)
