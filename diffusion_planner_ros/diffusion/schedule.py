"""DDPM noise schedule (Ho et al. 2020) in the form the paper uses.

Levels are indexed t = 0 .. K-1 in code; the paper's k = t + 1. The object builds betas and alphas
once and owns no network: ``add_noise`` serves training and AddNoise (Algorithm 1, line 15),
``step`` does one reverse step (Algorithm 1, lines 19-20).

A noise model predicts the noise eps (DDPM, the default) or the clean sample x0 (the config's
``prediction``); ``target`` is what it learns and ``original`` / ``epsilon`` read either back, so
the sampling loops and losses never ask which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion_planner_ros.config import ScheduleConfig


def cosine_betas(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), betas clipped at 0.999."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos(((steps / num_steps) + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=0.999)


def linear_betas(num_steps: int) -> torch.Tensor:
    """Linear schedule of DDPM, rescaled so that any K spans the same noise range."""
    scale = 1000 / num_steps
    return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), num_steps, dtype=torch.float64)


@dataclass
class StepOutput:
    """Result of one reverse step."""

    prev_sample: torch.Tensor   # x_{t-1} (x_{t_prev} for a strided step)
    pred_original: torch.Tensor  # predicted x_0
    variance: torch.Tensor       # the step's posterior variance Sigma


class DDPMSchedule:
    """Betas, alphas and the closed forms of the forward and reverse processes."""

    def __init__(self, config: ScheduleConfig, device: torch.device | str = 'cpu'):
        self.config = config
        self.num_steps = config.num_steps
        betas = (cosine_betas if config.beta_schedule == 'cosine' else linear_betas)(
            config.num_steps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        table = {
            'betas': betas,
            'alphas': alphas,
            'alphas_cumprod': alphas_cumprod,
            'alphas_cumprod_prev': prev,
            'sqrt_alphas_cumprod': alphas_cumprod.sqrt(),
            'sqrt_one_minus_alphas_cumprod': (1.0 - alphas_cumprod).sqrt(),
            'posterior_variance': posterior_variance,
            # Posterior mean coefficients of x_0 and x_t (DDPM Eq. 7).
            'posterior_coef_x0': betas * prev.sqrt() / (1.0 - alphas_cumprod),
            'posterior_coef_xt': (1.0 - prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        self.device = torch.device(device)
        for name, values in table.items():
            setattr(self, name, values.to(device=self.device, dtype=torch.float32))

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast over a batch like ``like``."""
        if isinstance(t, int):
            return values[t]
        return values[t].view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor,
                  t: torch.Tensor | int) -> torch.Tensor:
        """q(x_t | x_0) sample: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM Eq. 4)."""
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def predict_original(self, x_t: torch.Tensor, eps: torch.Tensor,
                         t: torch.Tensor | int) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); t an int or one level per row."""
        return ((x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps)
                / self._at(self.sqrt_alphas_cumprod, t, x_t))

    @property
    def predicts_x0(self) -> bool:
        """Whether the noise model outputs x0 (else eps)."""
        return self.config.prediction == 'x0'

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Return what the noise model learns to output for x_t = add_noise(x0, noise, t)."""
        return x0 if self.predicts_x0 else noise

    def original(self, output: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor | int) -> torch.Tensor:
        """Return the x0 a model output stands for at level t (unclipped)."""
        return output if self.predicts_x0 else self.predict_original(x_t, output, t)

    def epsilon(self, output: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor | int) -> torch.Tensor:
        """Return the eps a model output stands for: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar)."""
        if not self.predicts_x0:
            return output
        return ((x_t - self._at(self.sqrt_alphas_cumprod, t, x_t) * output)
                / self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t))

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int | None = None):
        """Mean and variance of q(x_{t_prev} | x_t, x_0) (DDPM Eq. 6-7), t_prev = t - 1 by default.

        A strided step (t_prev < t - 1) is the same closed form over the jump: the levels
        between act as one step with 1 - beta = abar_t / abar_{t_prev} (-1 stands for x_0).
        """
        if t_prev is None or t_prev == t - 1:
            mean = self.posterior_coef_x0[t] * x0 + self.posterior_coef_xt[t] * x_t
            return mean, self.posterior_variance[t]
        if not -1 <= t_prev < t:
            raise ValueError(f'a reverse step goes from level {t} to a lower one, not {t_prev}')
        abar, abar_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        beta = 1.0 - abar / abar_prev
        mean = (abar_prev.sqrt() * beta * x0
                + (abar / abar_prev).sqrt() * (1.0 - abar_prev) * x_t) / (1.0 - abar)
        return mean, beta * (1.0 - abar_prev) / (1.0 - abar)

    def strided_levels(self, count: int) -> list[int]:
        """``count`` levels from K - 1 down to 0, evenly spaced: a sampling chain of count steps.

        count = K visits every level (DDPM); fewer is the strided sampling of DDIM (Song et al.
        2021) with the DDPM posterior over each jump.
        """
        if not 1 <= count <= self.num_steps:
            raise ValueError(f'{count} sampling steps: must be in [1, {self.num_steps}]')
        if count == 1:
            return [self.num_steps - 1]
        span = self.num_steps - 1
        return [round(span * i / (count - 1)) for i in range(count - 1, -1, -1)]

    def step(self, output: torch.Tensor, t: int, x_t: torch.Tensor,
             noise: torch.Tensor | None = None, noise_scale: float = 1.0,
             t_prev: int | None = None) -> StepOutput:
        """One reverse step x_t -> x_{t-1} (or x_{t_prev}) from the noise model's output.

        With clip_denoised off, the mean equals the paper's Eq. 10,
        (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t); clipping x_0 to [-1, 1] first is
        Diffuser's practice. ``noise`` is the standard normal draw of line 20; noise_scale scales
        its standard deviation (alpha in Algorithm 1, line 20). No noise is added at t = 0.
        """
        # Algorithm 1, line 19: (mu, Sigma) <- Denoise(x_k, eps_hat)
        x0 = self.original(output, x_t, t)
        if self.config.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, variance = self.posterior(x0, x_t, t, t_prev)
        # Algorithm 1, line 20: x_{k-1} ~ N(mu, alpha Sigma)
        if t == 0 or noise is None or noise_scale == 0.0:
            return StepOutput(mean, x0, variance)
        return StepOutput(mean + noise_scale * variance.sqrt() * noise, x0, variance)
