"""DMEMM's one-shot denoised trajectory (Proposition 1) for the modulation losses.

Paper levels are k = 1 .. K; code levels are t = k - 1 (schedule.alphas[t] is the paper's
alpha_k). The schedule supplies the arithmetic; the noise model is an argument.
"""

from __future__ import annotations

from typing import Callable

import torch

from diffusion_planner_ros.diffusion.schedule import DDPMSchedule

# eps(x (N, H, D), levels (N,), rows (N,)) -> (N, H, D); rows[n] is the batch row x[n] comes
# from, so the caller can pick that row's condition.
EpsilonFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def one_shot_coefficients(schedule: DDPMSchedule) -> torch.Tensor:
    """(1 - alpha_i) / sqrt((1 - abar_i) abar_i) for every level, the weights of Eq. 7-8."""
    abar = schedule.alphas_cumprod
    return (1.0 - schedule.alphas) / ((1.0 - abar) * abar).sqrt()


def one_shot_denoise(epsilon: EpsilonFn, schedule: DDPMSchedule, x0: torch.Tensor,
                     levels: torch.Tensor, noise: torch.Tensor,
                     terms: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """tau_hat_0(tau_0, k, eps) of DMEMM Eq. 8, differentiable in the noise model.

    tau_0 + sqrt((1 - abar_k) / abar_k) eps - sum_{i <= k} c_i eps_theta(sqrt(abar_i) tau_0 +
    sqrt(1 - abar_i) eps, i), one trajectory per batch row at its own level ``levels`` (B,)
    (code levels, 0-based). terms = 0 evaluates every i <= k (k network calls per row, exact);
    terms = m > 0 draws m levels i uniformly from 1..k per row and scales their sum by k / m, an
    unbiased estimate of the sum that keeps the cost at m network calls per row.
    """
    batch = x0.shape[0]
    abar = schedule.alphas_cumprod
    coef = one_shot_coefficients(schedule)
    shape = (batch,) + (1,) * (x0.dim() - 1)
    out = x0 + ((1.0 - abar[levels]) / abar[levels]).sqrt().view(shape) * noise
    if terms == 0:
        # rows (B * sum), each paired with one level i <= k of its own row.
        counts = levels + 1
        rows = torch.repeat_interleave(torch.arange(batch, device=x0.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        inner = torch.arange(int(counts.sum()), device=x0.device) - starts[rows]
        weight = coef[inner]
    else:
        rows = torch.arange(batch, device=x0.device).repeat_interleave(terms)
        draws = torch.rand(batch * terms, generator=generator, device=x0.device)
        inner = (draws * (levels[rows] + 1)).long().clamp(max=levels[rows])
        weight = coef[inner] * (levels[rows] + 1).to(x0.dtype) / terms
    view = (-1,) + (1,) * (x0.dim() - 1)
    noisy = (abar[inner].sqrt().view(view) * x0[rows]
             + (1.0 - abar[inner]).sqrt().view(view) * noise[rows])
    eps = epsilon(noisy, inner, rows)  # (N, H, D)
    correction = torch.zeros_like(out).index_add(0, rows, weight.view(view) * eps)
    return out - correction


def reverse_mean_chain(epsilon: EpsilonFn, schedule: DDPMSchedule, x_t: torch.Tensor,
                       t: int) -> torch.Tensor:
    """Step-by-step reverse means of Eq. 4 from x_t down to x_0, no noise and no clipping.

    Unrolled, this is Eq. 7: x_t / sqrt(abar_k) - sum_i c_i eps_theta(x_i, i) on the chain's own
    intermediate trajectories; Eq. 8 replaces them by forward-noised copies of tau_0.
    """
    x = x_t
    rows = torch.arange(x.shape[0], device=x.device)
    for level in range(t, -1, -1):
        levels = torch.full((x.shape[0],), level, device=x.device, dtype=torch.long)
        eps = epsilon(x, levels, rows)
        alpha = schedule.alphas[level]
        x = (x - (1.0 - alpha) / schedule.sqrt_one_minus_alphas_cumprod[level] * eps) \
            / alpha.sqrt()
    return x
