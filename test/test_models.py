"""Model properties: causal mask, KV cache, shapes and validation."""

import pytest
import torch

from diffusion_planner_ros.config import InverseDynamicsConfig, PriorConfig, UnetConfig
from diffusion_planner_ros.models import InverseDynamics, TemporalUnet, TrajectoryPrior
from diffusion_planner_ros.models.onnx_friendly import (
    Conv1dAs2d, ExpMish, GroupNormFullAffine, onnx_friendly)


def small_prior(block_size=12) -> TrajectoryPrior:
    torch.manual_seed(0)
    return TrajectoryPrior(PriorConfig(n_layer=2, n_head=2, n_embd=32, dropout=0.0), 4, 2,
                           block_size).eval()


def test_causal_mask_changing_a_later_token_changes_no_earlier_output():
    prior = small_prior()
    states, conditions = torch.randn(2, 10, 4), torch.randn(2, 10, 2)
    before_s, before_c, _ = prior(states, conditions)
    changed = states.clone()
    changed[:, 6] += 5.0
    after_s, after_c, _ = prior(changed, conditions)
    assert torch.allclose(before_s[:, :6], after_s[:, :6], atol=1e-6)
    assert torch.allclose(before_c[:, :6], after_c[:, :6], atol=1e-6)
    assert not torch.allclose(before_s[:, 6:], after_s[:, 6:], atol=1e-3)


@pytest.mark.parametrize('hold', [True, False])
def test_kv_cache_rollout_equals_full_recompute(hold):
    prior = small_prior()
    states, conditions = torch.randn(3, 4, 4), torch.randn(3, 4, 2)
    cached = prior.rollout(states, conditions, 8, hold_condition=hold, use_cache=True)
    full = prior.rollout(states, conditions, 8, hold_condition=hold, use_cache=False)
    assert cached[0].shape == (3, 8, 4) and cached[1].shape == (3, 8, 2)
    assert torch.allclose(cached[0], full[0], atol=1e-5)
    assert torch.allclose(cached[1], full[1], atol=1e-5)
    if hold:
        assert torch.equal(cached[1], conditions[:, -1:].expand(3, 8, 2))


def test_prefill_with_cache_matches_single_pass():
    prior = small_prior()
    states, conditions = torch.randn(1, 8, 4), torch.randn(1, 8, 2)
    whole, _, _ = prior(states, conditions)
    _, _, cache = prior(states[:, :5], conditions[:, :5])
    tail, _, _ = prior(states[:, 5:], conditions[:, 5:], past=cache, start=5)
    assert torch.allclose(whole[:, 5:], tail, atol=1e-5)


def test_prior_rejects_more_tokens_than_its_block():
    prior = small_prior(block_size=6)
    with pytest.raises(ValueError, match='block size'):
        prior(torch.randn(1, 7, 4), torch.randn(1, 7, 2))


def test_unet_shapes_and_condition_mask():
    torch.manual_seed(0)
    unet = TemporalUnet(UnetConfig(dim=16, dim_mults=(1, 2, 4)), 4, 2, 16).eval()
    x, k, cond = torch.randn(3, 16, 4), torch.tensor([0, 5, 99]), torch.randn(3, 2)
    out = unet(x, k, cond)
    assert out.shape == x.shape
    dropped_a = unet(x, k, cond, torch.zeros(3))
    dropped_b = unet(x, k, torch.randn(3, 2), torch.zeros(3))
    assert torch.allclose(dropped_a, dropped_b)
    assert not torch.allclose(out, dropped_a)


def test_exp_mish_is_mish_to_float_precision():
    x = torch.cat([torch.linspace(-100.0, 100.0, 40001), torch.tensor([0.0, 19.99, 20.0, 20.01])])
    assert torch.allclose(ExpMish()(x), torch.nn.functional.mish(x), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(ExpMish()(torch.tensor([1e4, -1e4]))).all()


@pytest.mark.parametrize('stride, padding, kernel', [(1, 2, 5), (2, 1, 3), (1, 0, 1)])
def test_conv1d_as_2d_is_the_same_convolution(stride, padding, kernel):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        assert torch.allclose(Conv1dAs2d(conv)(x), conv(x), atol=1e-6)
    with pytest.raises(ValueError, match='plain convolutions'):
        Conv1dAs2d(torch.nn.Conv1d(6, 10, 3, groups=2))


def test_group_norm_full_affine_is_the_same_group_norm():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        assert torch.allclose(GroupNormFullAffine(norm)(x), norm(x), atol=1e-5)
    with pytest.raises(ValueError, match='affine'):
        GroupNormFullAffine(torch.nn.GroupNorm(4, 16, affine=False))


def test_onnx_friendly_rewrites_a_copy_and_keeps_the_output():
    torch.manual_seed(0)
    unet = TemporalUnet(UnetConfig(dim=16, dim_mults=(1, 2, 4)), 4, 2, 16).eval()
    swapped = onnx_friendly(unet)
    kinds = {type(m) for m in swapped.modules()}
    assert {ExpMish, Conv1dAs2d, GroupNormFullAffine} <= kinds
    assert not {torch.nn.Mish, torch.nn.Conv1d, torch.nn.GroupNorm} & kinds
    assert any(isinstance(m, torch.nn.Mish) for m in unet.modules())  # the original is untouched
    x, k, cond = torch.randn(2, 16, 4), torch.tensor([3, 70]), torch.randn(2, 2)
    with torch.no_grad():
        assert torch.allclose(swapped(x, k, cond), unet(x, k, cond), atol=1e-5)


def test_unet_horizon_must_fit_the_downsampling():
    with pytest.raises(ValueError, match='multiple of'):
        TemporalUnet(UnetConfig(dim=16, dim_mults=(1, 2, 4, 8)), 4, 2, 20)


def test_inverse_dynamics_shape():
    model = InverseDynamics(InverseDynamicsConfig(hidden_dim=32), 4, 2)
    assert model(torch.randn(5, 4), torch.randn(5, 4)).shape == (5, 2)
