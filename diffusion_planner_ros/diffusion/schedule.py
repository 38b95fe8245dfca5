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

    prev_sample: torch.Tensor   # x_{t-1}
    pred_original: torch.Tensor  # predicted x_0


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

    def predict_original(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - self.sqrt_one_minus_alphas_cumprod[t] * eps) / self.sqrt_alphas_cumprod[t]

    @property
    def predicts_x0(self) -> bool:
        """Whether the noise model outputs x0 (else eps)."""
        return self.config.prediction == 'x0'

    def target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Return what the noise model learns to output for x_t = add_noise(x0, noise, t)."""
        return x0 if self.predicts_x0 else noise

    def original(self, output: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """Return the x0 a model output stands for at level t (unclipped)."""
        return output if self.predicts_x0 else self.predict_original(x_t, output, t)

    def epsilon(self, output: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor | int) -> torch.Tensor:
        """Return the eps a model output stands for: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar)."""
        if not self.predicts_x0:
            return output
        return ((x_t - self._at(self.sqrt_alphas_cumprod, t, x_t) * output)
                / self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t))

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: int):
        """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7)."""
        mean = self.posterior_coef_x0[t] * x0 + self.posterior_coef_xt[t] * x_t
        return mean, self.posterior_variance[t]

    def step(self, output: torch.Tensor, t: int, x_t: torch.Tensor,
             noise: torch.Tensor | None = None, noise_scale: float = 1.0) -> StepOutput:
        """One reverse step x_t -> x_{t-1} from the noise model's output (eps or x0).

        With clip_denoised off, the mean equals the paper's Eq. 10,
        (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t); clipping x_0 to [-1, 1] first is
        Diffuser's practice. ``noise`` is the standard normal draw of line 20; noise_scale scales
        its standard deviation (alpha in Algorithm 1, line 20). No noise is added at t = 0.
        """
        # Algorithm 1, line 19: (mu, Sigma) <- Denoise(x_k, eps_hat)
        x0 = self.original(output, x_t, t)
        if self.config.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, variance = self.posterior(x0, x_t, t)
        # Algorithm 1, line 20: x_{k-1} ~ N(mu, alpha Sigma)
        if t == 0 or noise is None or noise_scale == 0.0:
            return StepOutput(mean, x0)
        return StepOutput(mean + noise_scale * variance.sqrt() * noise, x0)
