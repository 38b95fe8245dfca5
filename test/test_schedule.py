"""Noise schedule and sampler math against the closed forms."""

import pytest
import torch

from diffusion_planner_ros.config import ScheduleConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, denoise, refine, sample
from diffusion_planner_ros.diffusion.sampling import apply_constraints


def schedule(**kwargs) -> DDPMSchedule:
    return DDPMSchedule(ScheduleConfig(**kwargs))


@pytest.mark.parametrize('kind', ['cosine', 'linear'])
def test_alphas_are_products_of_betas(kind):
    s = schedule(num_steps=50, beta_schedule=kind)
    assert torch.all(s.betas > 0) and torch.all(s.betas < 1)
    expected = torch.cumprod(1 - s.betas.double(), 0).float()
    assert torch.allclose(s.alphas_cumprod, expected, atol=1e-6)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_add_noise_matches_q_sample():
    s = schedule(num_steps=100)
    x0, eps = torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    t = torch.tensor([0, 40, 99])
    out = s.add_noise(x0, eps, t)
    for i, level in enumerate(t.tolist()):
        abar = s.alphas_cumprod[level]
        assert torch.allclose(out[i], abar.sqrt() * x0[i] + (1 - abar).sqrt() * eps[i], atol=1e-6)


def test_posterior_matches_closed_form():
    s = schedule(num_steps=100)
    x0, xt, t = torch.randn(2, 8, 4), torch.randn(2, 8, 4), 37
    mean, var = s.posterior(x0, xt, t)
    abar, abar_prev, beta = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]
    expected_mean = (abar_prev.sqrt() * beta / (1 - abar) * x0
                     + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * xt)
    assert torch.allclose(mean, expected_mean, atol=1e-5)
    assert torch.allclose(var, (1 - abar_prev) / (1 - abar) * beta, atol=1e-7)


def test_step_mean_is_paper_eq_10_without_clipping():
    s = schedule(num_steps=100, clip_denoised=False)
    xt, eps, t = torch.randn(2, 8, 4), torch.randn(2, 8, 4), 20
    out = s.step(eps, t, xt, noise=None)
    beta, abar = s.betas[t], s.alphas_cumprod[t]
    eq10 = (xt - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
    assert torch.allclose(out.prev_sample, eq10, atol=1e-4)
    assert torch.allclose(out.pred_original, s.predict_original(xt, eps, t))


def test_step_adds_scaled_noise_except_at_level_zero():
    s = schedule(num_steps=10, clip_denoised=False)
    xt, eps, noise = torch.randn(1, 4, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    mean = s.step(eps, 5, xt).prev_sample
    noisy = s.step(eps, 5, xt, noise, noise_scale=0.5).prev_sample
    assert torch.allclose(noisy - mean, 0.5 * s.posterior_variance[5].sqrt() * noise, atol=1e-6)
    assert torch.equal(s.step(eps, 0, xt, noise).prev_sample, s.step(eps, 0, xt).prev_sample)


class LinearEps(torch.nn.Module):
    """A tiny deterministic noise model with the U-Net's call signature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Linear(4, 4)
        self.c = torch.nn.Linear(2, 4)

    def forward(self, x, k, condition, mask):
        cond = self.c(condition) * mask[:, None]
        return torch.tanh(self.w(x) + cond[:, None] + 0.01 * k[:, None, None])


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    s, model, cond = schedule(num_steps=20), LinearEps(), torch.randn(2, 2)
    runs = []
    for seed in (3, 3, 4):
        g = torch.Generator().manual_seed(seed)
        runs.append(sample(model, s, (2, 8, 4), cond, 1.2, generator=g))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_refinement_from_level_K_equals_full_sampling():
    s, model, cond = schedule(num_steps=100), LinearEps(), torch.randn(1, 2)
    trajectory = torch.rand(1, 8, 4) * 2 - 1
    g1 = torch.Generator().manual_seed(7)
    full = sample(model, s, (1, 8, 4), cond, 1.2, generator=g1)
    g2 = torch.Generator().manual_seed(7)
    refined = refine(model, s, trajectory, 100, cond, 1.2, generator=g2)
    # abar_K is ~1e-8 under the cosine schedule, so x_K is pure noise up to ~1e-4.
    assert torch.allclose(full, refined, atol=1e-3)
    g3 = torch.Generator().manual_seed(7)
    short = refine(model, s, trajectory, 3, cond, 1.2, generator=g3)
    assert not torch.allclose(full, short, atol=1e-2)


def test_refine_zero_steps_returns_the_prior_trajectory():
    s, model = schedule(num_steps=10), LinearEps()
    trajectory = torch.randn(1, 8, 4)
    assert refine(model, s, trajectory, 0, torch.zeros(1, 2), 1.0) is trajectory
    with pytest.raises(ValueError, match='refine steps'):
        refine(model, s, trajectory, 11, torch.zeros(1, 2), 1.0)


def test_constraints_hold_after_denoising_and_nan_leaves_dims_free():
    s, model = schedule(num_steps=10), LinearEps()
    start = torch.tensor([0.1, -0.2, 0.3, 0.4])
    goal = torch.tensor([0.5, 0.6, float('nan'), float('nan')])
    x = torch.randn(2, 8, 4)
    out = denoise(model, s, x, 9, torch.zeros(2, 2), 1.2, {0: start, 7: goal},
                  torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], start.expand(2, 4))
    assert torch.allclose(out[:, 7, :2], goal[:2].expand(2, 2))
    assert torch.isfinite(out).all()
    free = apply_constraints(x, {7: goal})
    assert torch.equal(free[:, 7, 2:], x[:, 7, 2:])


def test_guidance_scale_zero_ignores_the_condition():
    s, model = schedule(num_steps=5), LinearEps()
    x = torch.randn(1, 8, 4)
    outs = [denoise(model, s, x, 4, torch.full((1, 2), c), 0.0, None,
                    torch.Generator().manual_seed(0)) for c in (-1.0, 1.0)]
    assert torch.allclose(outs[0], outs[1])
    guided = [denoise(model, s, x, 4, torch.full((1, 2), c), 1.0, None,
                      torch.Generator().manual_seed(0)) for c in (-1.0, 1.0)]
    assert not torch.allclose(guided[0], guided[1])


def test_strided_levels_span_the_schedule_evenly():
    s = schedule(num_steps=100)
    assert s.strided_levels(100) == list(range(99, -1, -1))
    assert s.strided_levels(5) == [99, 74, 50, 25, 0]
    assert s.strided_levels(1) == [99]
    for bad in (0, 101):
        with pytest.raises(ValueError, match='sampling steps'):
            s.strided_levels(bad)


def test_a_strided_step_is_the_posterior_over_the_jump():
    # q(x_20 | x_30, x0) by Gaussian conditioning of the forward marginals: x_20 ~
    # N(sqrt(abar_20) x0, 1 - abar_20) and x_30 = r x_20 + sqrt(1 - r^2) eps, with
    # r^2 = abar_30 / abar_20.
    s = schedule(num_steps=50, clip_denoised=False)
    x0, xt = torch.randn(2, 8, 4).double(), torch.randn(2, 8, 4).double()
    abar, abar_prev = s.alphas_cumprod[30].double(), s.alphas_cumprod[20].double()
    r = (abar / abar_prev).sqrt()
    gain = r * (1 - abar_prev) / (1 - abar)
    expected_mean = abar_prev.sqrt() * x0 + gain * (xt - abar.sqrt() * x0)
    expected_var = (1 - abar_prev) * (1 - gain * r)
    mean, variance = s.posterior(x0.float(), xt.float(), 30, t_prev=20)
    assert torch.allclose(mean.double(), expected_mean, atol=1e-5)
    assert torch.allclose(variance.double(), expected_var, atol=1e-6)
    # A jump of one level is the ordinary step.
    assert torch.allclose(s.posterior(x0, xt, 30, t_prev=29)[0], s.posterior(x0, xt, 30)[0])
    with pytest.raises(ValueError, match='lower one'):
        s.posterior(x0, xt, 30, t_prev=30)


def test_strided_sampling_with_a_model_that_knows_the_data_lands_on_it():
    s = schedule(num_steps=100)
    x0 = torch.rand(1, 8, 4) * 1.6 - 0.8

    class Oracle(torch.nn.Module):
        def forward(self, x, k, condition, mask):
            a = s.sqrt_alphas_cumprod[k].view(-1, 1, 1)
            return (x - a * x0) / s.sqrt_one_minus_alphas_cumprod[k].view(-1, 1, 1)

    for steps in (100, 20, 5):
        out = sample(Oracle(), s, (2, 8, 4), torch.zeros(2, 2), 0.0,
                     generator=torch.Generator().manual_seed(0), steps=steps)
        assert torch.allclose(out, x0.expand(2, 8, 4), atol=1e-4)
