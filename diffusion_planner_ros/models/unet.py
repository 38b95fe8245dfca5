"""Temporal U-Net noise model eps_theta(x_k, y, k) over state trajectories.

Diffuser's architecture (Janner et al. 2022, appendix C): residual blocks of two temporal
convolutions, each followed by GroupNorm and Mish. The diffusion-time embedding and the condition
embedding (two-layer MLPs, paper appendix A.4) are concatenated and added after the first
convolution of every block. The condition embedding is multiplied by a 0/1 mask: 0 is the null
condition of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffusion_planner_ros.config import UnetConfig


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion level."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, dim)."""
        half = self.dim // 2
        scale = math.log(10000) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, device=k.device) * -scale)
        angles = k.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, out_channels),
            nn.Mish(),
        )


class ResidualTemporalBlock(nn.Module):
    """Two ConvBlocks with the embedding added between them, plus a residual path."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, kernel_size: int,
                 groups: int):
        super().__init__()
        self.conv_in = ConvBlock(in_channels, out_channels, kernel_size, groups)
        self.conv_out = ConvBlock(out_channels, out_channels, kernel_size, groups)
        self.embed = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_channels))
        self.residual = (nn.Conv1d(in_channels, out_channels, 1)
                         if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Map x (B, C_in, H) and embedding (B, E) to (B, C_out, H)."""
        h = self.conv_in(x) + self.embed(embedding)[:, :, None]
        return self.conv_out(h) + self.residual(x)


class TemporalUnet(nn.Module):
    """eps_theta(x_k, y, k) for trajectories x of shape (B, H, obs_dim)."""

    def __init__(self, config: UnetConfig, obs_dim: int, cond_dim: int, horizon: int):
        super().__init__()
        if horizon % config.downsample_factor:
            raise ValueError(f'horizon {horizon} must be a multiple of '
                             f'2**(len(dim_mults) - 1) = {config.downsample_factor}')
        self.config, self.obs_dim, self.cond_dim, self.horizon = config, obs_dim, cond_dim, horizon
        e, hidden = config.embed_dim, config.embed_hidden
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(e), nn.Linear(e, hidden), nn.Mish(), nn.Linear(hidden, e))
        self.cond_mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.Mish(), nn.Linear(hidden, e))
        embed_dim = 2 * e
        channels = [obs_dim] + [config.dim * m for m in config.dim_mults]
        pairs = list(zip(channels[:-1], channels[1:]))
        block = dict(embed_dim=embed_dim, kernel_size=config.kernel_size, groups=config.groups)

        self.down = nn.ModuleList()
        for index, (c_in, c_out) in enumerate(pairs):
            last = index == len(pairs) - 1
            self.down.append(nn.ModuleList([
                ResidualTemporalBlock(c_in, c_out, **block),
                ResidualTemporalBlock(c_out, c_out, **block),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1),
            ]))
        mid = channels[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, **block)
        self.mid2 = ResidualTemporalBlock(mid, mid, **block)
        self.up = nn.ModuleList()
        # Each up level undoes one downsample; the first level's skip stays unused (Diffuser).
        for c_in, c_out in reversed(pairs[1:]):
            self.up.append(nn.ModuleList([
                ResidualTemporalBlock(2 * c_out, c_in, **block),
                ResidualTemporalBlock(c_in, c_in, **block),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(
            ConvBlock(config.dim, config.dim, config.kernel_size, config.groups),
            nn.Conv1d(config.dim, obs_dim, 1),
        )

    def forward(self, x: torch.Tensor, k: torch.Tensor, condition: torch.Tensor,
                condition_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in x.

        x (B, H, obs_dim); k (B,) integer levels in [0, K); condition (B, cond_dim);
        condition_mask (B,) with 1 keeping the condition and 0 dropping it (None keeps all).
        Returns (B, H, obs_dim).
        """
        cond = self.cond_mlp(condition)
        if condition_mask is not None:
            cond = cond * condition_mask[:, None].to(cond.dtype)
        embedding = torch.cat([self.time_mlp(k), cond], dim=-1)  # (B, 2 * embed_dim)
        h = x.transpose(1, 2)  # (B, obs_dim, H)
        skips = []
        for block_a, block_b, downsample in self.down:
            h = block_b(block_a(h, embedding), embedding)
            skips.append(h)
            h = downsample(h)
        h = self.mid2(self.mid1(h, embedding), embedding)
        for block_a, block_b, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block_b(block_a(h, embedding), embedding))
        return self.final(h).transpose(1, 2)  # (B, H, obs_dim)
