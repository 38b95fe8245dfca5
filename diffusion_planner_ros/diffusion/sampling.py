"""Sampling loops that call a noise model: full sampling, refinement, warm start, guidance.

Full DDPM sampling, Trajectory Diffuser refinement, Diffuser's warm start, and gradient guidance
on the reverse-step mean.

The loops take the network as an argument; the schedule supplies the arithmetic. Constraints are
a mapping from plan index to a normalised state, written into the sample before every network
call and after the last step (Algorithm 1, line 17: the plan starts at the current state).
A guide is a function (mean, t) -> gradient of an objective at the mean; the step then draws
x_{t-1} ~ N(mu + scale * Sigma * grad, Sigma) (Diffuser Algorithm 1; DMEMM Eq. 13), the move
clipped per entry to guide_limit when one is set.

Noise comes from a generator, or from ``draws``: standard-normal tensors drawn beforehand (a
captured graph cannot call the generator); draw_noise draws them in the order the loops would.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from diffusion_planner_ros.diffusion.schedule import DDPMSchedule

NoiseModel = Callable[..., torch.Tensor]
Constraints = Mapping[int, torch.Tensor]
Guide = Callable[[torch.Tensor, int], torch.Tensor]


def apply_constraints(x: torch.Tensor, constraints: Constraints | None) -> torch.Tensor:
    """Write constrained states into x (B, H, obs_dim).

    Each value is (B, obs_dim) or (obs_dim,); NaN entries leave that dimension free (a goal fixes
    the position of the last state, not its velocity).
    """
    if constraints:
        x = x.clone()
        for index, value in constraints.items():
            value = value.expand_as(x[:, index])
            x[:, index] = torch.where(torch.isnan(value), x[:, index], value)
    return x


def guided_epsilon(model: NoiseModel, x: torch.Tensor, t: int, condition: torch.Tensor,
                   guidance_scale: float) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u) (paper Eq. 11) from one batched forward pass.

    w = 0 is the unconditional model and w = 1 the conditional one: one pass of batch B each.
    """
    batch = x.shape[0]
    if guidance_scale in (0.0, 1.0):
        levels = torch.full((batch,), t, device=x.device, dtype=torch.long)
        mask = torch.full((batch,), guidance_scale, device=x.device)
        return model(x, levels, condition, mask)
    levels = torch.full((2 * batch,), t, device=x.device, dtype=torch.long)
    mask = torch.cat([torch.ones(batch, device=x.device), torch.zeros(batch, device=x.device)])
    eps = model(torch.cat([x, x]), levels, torch.cat([condition, condition]), mask)
    eps_c, eps_u = eps.chunk(2)  # (B, H, obs_dim) each
    return eps_u + guidance_scale * (eps_c - eps_u)


def guided_mean(mean: torch.Tensor, t: int, variance: torch.Tensor, guide: Guide | None,
                guide_scale: float, guide_limit: float = 0.0) -> torch.Tensor:
    """Move the mean along the guide: mu + scale Sigma_t grad J(mu) (Diffuser, DMEMM Eq. 13).

    guide_limit > 0 clips the move of each entry to +-guide_limit.
    """
    if guide is None or guide_scale == 0.0:
        return mean
    move = guide_scale * variance * guide(mean, t)
    if guide_limit > 0.0:
        move = move.clamp(-guide_limit, guide_limit)
    return mean + move


def denoise(model: NoiseModel, schedule: DDPMSchedule, x: torch.Tensor, t_start: int,
            condition: torch.Tensor, guidance_scale: float, constraints: Constraints | None = None,
            generator: torch.Generator | None = None, noise_scale: float = 1.0,
            guide: Guide | None = None, guide_scale: float = 0.0,
            draws: torch.Tensor | None = None, levels: list[int] | None = None,
            guide_limit: float = 0.0) -> torch.Tensor:
    """Run reverse steps t_start .. 0 from x_{t_start}; return x_0 (Algorithm 1, lines 16-21).

    levels (descending, from t_start, ending at 0), if given, are the levels visited instead of
    every one (strided sampling). draws (steps - 1, *x.shape), if given, holds the noise of the
    steps in that order (none for the last, at level 0).
    """
    levels = list(range(t_start, -1, -1)) if levels is None else levels
    for index, t in enumerate(levels):
        t_prev = levels[index + 1] if index + 1 < len(levels) else -1
        # Line 17: constrain the plan to start at the current state.
        x = apply_constraints(x, constraints)
        # Line 18: classifier-free guidance.
        output = guided_epsilon(model, x, t, condition, guidance_scale)
        # Line 19: posterior mean (moved along the guide's gradient when there is one).
        step = schedule.step(output, t, x, t_prev=t_prev)
        mean = guided_mean(step.prev_sample, t, step.variance, guide, guide_scale, guide_limit)
        # Line 20: sample around it; no noise at t = 0.
        if t > 0 and noise_scale > 0.0:
            noise = (draws[index] if draws is not None else
                     torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
            mean = mean + noise_scale * step.variance.sqrt() * noise
        x = mean
    return apply_constraints(x, constraints)


def sample(model: NoiseModel, schedule: DDPMSchedule, shape: tuple, condition: torch.Tensor,
           guidance_scale: float, constraints: Constraints | None = None,
           generator: torch.Generator | None = None, noise_scale: float = 1.0,
           device: torch.device | str = 'cpu', guide: Guide | None = None,
           guide_scale: float = 0.0, draws: torch.Tensor | None = None,
           steps: int = 0, guide_limit: float = 0.0) -> torch.Tensor:
    """DDPM sampling from pure noise over all K levels (Decision Diffuser, Diffuser).

    steps > 0 visits that many levels, strided evenly over the K (schedule.strided_levels).
    draws (steps or K, *shape), if given, replaces the generator: draws[0] is x_K, draws[1:]
    the steps'.
    """
    x = draws[0] if draws is not None else torch.randn(shape, generator=generator, device=device)
    return denoise(model, schedule, x, schedule.num_steps - 1, condition, guidance_scale,
                   constraints, generator, noise_scale, guide, guide_scale,
                   None if draws is None else draws[1:],
                   schedule.strided_levels(steps) if steps else None, guide_limit)


def refine(model: NoiseModel, schedule: DDPMSchedule, trajectory: torch.Tensor, steps: int,
           condition: torch.Tensor, guidance_scale: float, constraints: Constraints | None = None,
           generator: torch.Generator | None = None, noise_scale: float = 1.0,
           guide: Guide | None = None, guide_scale: float = 0.0,
           draws: torch.Tensor | None = None, guide_limit: float = 0.0) -> torch.Tensor:
    """Trajectory Diffuser refinement (Algorithm 1, lines 14-22).

    The prior's trajectory is noised to level k = ``steps`` (AddNoise, line 15) and denoised from
    there. steps = 0 returns the trajectory unchanged (prior only). draws (steps, *shape), if
    given, replaces the generator: draws[0] is AddNoise's noise, draws[1:] the reverse steps'.
    """
    if steps == 0:
        return trajectory
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f'refine steps {steps} must be in [0, {schedule.num_steps}]')
    noise = (draws[0] if draws is not None
             else torch.randn(trajectory.shape, generator=generator, device=trajectory.device,
                              dtype=trajectory.dtype))
    x = schedule.add_noise(trajectory, noise, steps - 1)
    return denoise(model, schedule, x, steps - 1, condition, guidance_scale, constraints,
                   generator, noise_scale, guide, guide_scale,
                   None if draws is None else draws[1:], guide_limit=guide_limit)


def draw_noise(shape: tuple, count: int, generator: torch.Generator | None,
               device: torch.device | str = 'cpu') -> torch.Tensor:
    """Draw the (count, *shape) standard normals of refine (count = k) or sample (count = K).

    One generator call per draw, in the loops' order, so a plan made from these draws equals one
    made with the generator itself from the same generator state (when noise_scale > 0).
    """
    return torch.stack([torch.randn(shape, generator=generator, device=device)
                        for _ in range(count)])


def shift_plan(plan: torch.Tensor, executed: int) -> torch.Tensor:
    """Drop the ``executed`` first entries of (B, H, D) and repeat the last one to keep H."""
    if not 0 <= executed < plan.shape[1]:
        raise ValueError(f'executed {executed} must be in [0, {plan.shape[1]})')
    tail = plan[:, -1:].expand(-1, executed, -1)
    return torch.cat([plan[:, executed:], tail], dim=1)


def warm_start(model: NoiseModel, schedule: DDPMSchedule, previous: torch.Tensor, executed: int,
               steps: int, condition: torch.Tensor, guidance_scale: float,
               constraints: Constraints | None = None, generator: torch.Generator | None = None,
               noise_scale: float = 1.0, guide: Guide | None = None,
               guide_scale: float = 0.0, guide_limit: float = 0.0) -> torch.Tensor:
    """Diffuser's warm-start replanning (section 5.4).

    The previous plan, shifted by the steps executed since it was made, is noised to level
    ``steps`` and denoised from there instead of from pure noise.
    """
    return refine(model, schedule, shift_plan(previous, executed), steps, condition,
                  guidance_scale, constraints, generator, noise_scale, guide, guide_scale,
                  guide_limit=guide_limit)
