"""The fast planning paths: ONNX Runtime on a CPU, CUDA graphs on a GPU, against eager."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import reverse_chain_atol
from test_bundle_planner import GOAL, OBS, assert_same_plans, tiny_config, write_bundle

from diffusion_planner_ros.config import UnetConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, draw_noise, refine
from diffusion_planner_ros.models.unet import TemporalUnet
from diffusion_planner_ros.planning import accelerate, load_planner
from diffusion_planner_ros.planning.accelerate import (CudaGraphStage, OnnxStage, choose_backend,
                                                       make_stage)
from diffusion_planner_ros.planning.bundle import derive_bundle
from diffusion_planner_ros.planning.stages import RefineStage

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
SHIPPED = 'models/pointmaze_umaze'


def plan_sequence(planner, steps=12):
    """Plans along a fixed observation sequence (the same inputs for every backend)."""
    rng = np.random.default_rng(3)
    plans = []
    for _ in range(steps):
        observation = OBS + rng.normal(0.0, 0.2, 4)
        plans.append(planner.plan(observation, goal=GOAL))
    return plans


def refine_stage(horizon_check=8):
    torch.manual_seed(0)
    unet = TemporalUnet(UnetConfig(dim=8, dim_mults=(1, 2), embed_dim=8, embed_hidden=16),
                        obs_dim=4, cond_dim=2, horizon=horizon_check).eval()
    return RefineStage(unet, DDPMSchedule(tiny_config().schedule), steps=3,
                       guidance_scale=1.2, noise_scale=0.5)


def refine_atol(stage):
    """What a refine stage's output may differ by between backends (same inputs)."""
    return reverse_chain_atol(stage.schedule, stage.steps, stage.guidance_scale)


def refine_inputs(horizon, seed=0):
    generator = torch.Generator().manual_seed(seed)
    plan = torch.randn(1, horizon, 4, generator=generator)
    return plan, torch.randn(1, 2, generator=generator), draw_noise(plan.shape, 3, generator)


# Noise drawn beforehand --------------------------------------------------------------------
def test_drawn_noise_reproduces_the_generator_path_exactly():
    stage = refine_stage()
    plan, condition, _ = refine_inputs(8)
    with_generator = refine(stage.diffuser, stage.schedule, plan, 3, condition, 1.2,
                            {0: plan[0, 0]}, torch.Generator().manual_seed(5), 0.5)
    draws = draw_noise(plan.shape, 3, torch.Generator().manual_seed(5))
    assert torch.equal(stage(plan, condition, draws), with_generator)


# Backend choice ----------------------------------------------------------------------------
def test_auto_picks_onnx_on_cpu_and_falls_back_with_a_reason(monkeypatch):
    assert choose_backend('auto', torch.device('cpu'))[0] == 'onnx'
    monkeypatch.setattr(accelerate, 'onnxruntime_available', lambda: False)
    backend, reason = choose_backend('auto', torch.device('cpu'))
    assert backend == 'eager' and 'onnxruntime is not installed' in reason
    with pytest.raises(ImportError, match='onnxruntime'):
        choose_backend('onnx', torch.device('cpu'))


def test_backends_that_cannot_run_on_the_device_are_refused():
    with pytest.raises(ValueError, match='needs a CUDA device'):
        choose_backend('cuda_graph', torch.device('cpu'))
    with pytest.raises(ValueError, match='must be one of'):
        choose_backend('tensorrt', torch.device('cpu'))
    with pytest.raises(ValueError, match='planner.backend'):
        tiny_config(backend='tensorrt')


# ONNX Runtime (CPU) ------------------------------------------------------------------------
def test_onnx_planner_gives_the_eager_plans(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    eager = load_planner(bundle, backend='eager')
    fast = load_planner(bundle, backend='onnx')
    assert fast.backend == 'onnx' and not fast.fallback_reasons
    assert_same_plans(fast, plan_sequence(fast), plan_sequence(eager))


@pytest.mark.slow
def test_shipped_bundle_onnx_plans_match_eager_and_goal_inpainting_is_captured():
    eager = load_planner(SHIPPED, 'cpu', backend='eager', inpaint_goal=True)
    fast = load_planner(SHIPPED, 'cpu', backend='onnx', inpaint_goal=True)
    assert {'prior', 'refine', 'inverse'} <= set(fast.stages)
    assert all(stage.captures == 1 for stage in fast.stages.values())
    assert_same_plans(fast, plan_sequence(fast, 8), plan_sequence(eager, 8))


def test_shipped_hopper_bundle_plans_alike_on_both_paths_and_keeps_the_hopper_up():
    from diffusion_planner_ros.envs import make_env

    planners = [load_planner('models/hopper', 'cpu', backend=backend)
                for backend in ('eager', 'onnx')]
    assert planners[1].backend == 'onnx' and planners[1].condition_kind == 'returns'
    env = make_env('hopper')
    observation, _ = env.reset(seed=1000)
    target = planners[0].config.target_return
    for _ in range(40):
        eager, fast = (planner.plan(observation, returns_to_go=target) for planner in planners)
        assert_same_plans(planners[1], [fast], [eager])
        observation, reward, terminated, _, _ = env.step(eager.actions[0].astype(np.float32))
        target -= reward
        assert not terminated
    env.close()


@pytest.mark.slow
def test_a_new_input_shape_is_captured_again_not_replayed():
    stage = refine_stage()
    fast = make_stage(stage, 'onnx')
    for horizon in (8, 16, 8):
        inputs = refine_inputs(horizon, seed=horizon)
        out = fast(*inputs)
        assert out.shape == (1, horizon, 4)
        torch.testing.assert_close(out, stage(*inputs), rtol=0, atol=refine_atol(stage))
    assert fast.captures == 2  # horizon 8 once, horizon 16 once; 8 again is replayed


def test_a_failed_capture_runs_eagerly_and_says_why(monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError('operator not supported')

    monkeypatch.setattr(accelerate, '_ONNX_CACHE', {})
    monkeypatch.setenv(accelerate.CACHE_ENV, 'off')
    monkeypatch.setattr(torch.onnx, 'export', broken_export)
    stage = refine_stage()
    fast = OnnxStage(stage)
    inputs = refine_inputs(8)
    torch.testing.assert_close(fast(*inputs), stage(*inputs))
    assert 'operator not supported' in fast.fallback_reason
    assert 'running eager' in fast.fallback_reason


def test_an_export_is_kept_on_disk_and_a_damaged_one_redone(tmp_path, monkeypatch):
    exports = []
    export = torch.onnx.export

    def counted_export(*args, **kwargs):
        exports.append(1)
        return export(*args, **kwargs)

    monkeypatch.setenv(accelerate.CACHE_ENV, str(tmp_path / 'cache'))
    monkeypatch.setattr(torch.onnx, 'export', counted_export)
    stage, inputs = refine_stage(), refine_inputs(8)
    expected = stage(*inputs)

    def fresh_process_run():
        monkeypatch.setattr(accelerate, '_ONNX_CACHE', {})  # as in a new process
        fast = OnnxStage(stage)
        torch.testing.assert_close(fast(*inputs), expected, rtol=0, atol=refine_atol(stage))
        assert fast.fallback_reason is None

    fresh_process_run()
    (kept,) = (tmp_path / 'cache' / 'onnx').glob('*.onnx')
    fresh_process_run()
    assert len(exports) == 1  # the second run loaded the file
    kept.write_bytes(b'not an onnx model')
    fresh_process_run()
    assert len(exports) == 2 and kept.read_bytes() != b'not an onnx model'
    # Other weights are another model; 'off' keeps nothing.
    with torch.no_grad():
        next(stage.parameters()).add_(0.1)
    expected = stage(*inputs)
    fresh_process_run()
    assert len(list((tmp_path / 'cache' / 'onnx').glob('*.onnx'))) == 2
    monkeypatch.setenv(accelerate.CACHE_ENV, 'off')
    assert accelerate.onnx_cache_dir() is None
    fresh_process_run()
    assert len(exports) == 4


def test_warm_up_changes_no_plan(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    cold = load_planner(bundle, backend='eager')
    warm = load_planner(bundle, backend='eager')
    warm.warm_up()
    for plan, expected in zip(plan_sequence(warm, 4), plan_sequence(cold, 4)):
        assert np.array_equal(plan.prior_states, expected.prior_states)
        assert np.array_equal(plan.refined_states, expected.refined_states)
        assert np.array_equal(plan.actions, expected.actions)


def test_reconfigure_rebuilds_the_stages_or_keeps_the_old_config(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    planner = load_planner(bundle, backend='onnx')
    old = planner.config
    with pytest.raises(ValueError, match='trained levels'):
        planner.reconfigure(refine_steps=10_000)
    with pytest.raises(ValueError, match='steps ahead'):
        planner.reconfigure(replan_every=50)
    with pytest.raises(ValueError, match='cannot change'):
        planner.reconfigure(device='cuda')
    assert planner.config is old
    planner.reconfigure(refine_steps=2, replan_every=2)
    assert planner.stages['refine'].module.steps == 2
    assert planner.plan(OBS, goal=GOAL).actions.shape == (2, 2)
    reference = load_planner(bundle, backend='eager', refine_steps=2, replan_every=2)
    planner.reset()
    assert_same_plans(planner, plan_sequence(planner, 4), plan_sequence(reference, 4))
    planner.reconfigure(refine_steps=0)
    assert 'refine' not in planner.stages


@pytest.mark.slow
def test_decision_diffuser_sampling_stage_matches_eager(tmp_path):
    config = tiny_config()
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule,
                                                                      num_steps=10))
    bundle = write_bundle(tmp_path / 'td', config)
    derive_bundle(bundle, 'decision_diffuser', tmp_path / 'dd')
    eager = load_planner(tmp_path / 'dd', backend='eager')
    fast = load_planner(tmp_path / 'dd', backend='onnx')
    assert set(fast.stages) == {'sample', 'inverse'}
    assert_same_plans(fast, plan_sequence(fast, 4), plan_sequence(eager, 4))


# CUDA graphs (a GPU machine) ---------------------------------------------------------------
@CUDA
def test_cuda_graph_planner_gives_the_eager_plans(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    eager = load_planner(bundle, device='cuda', backend='eager')
    fast = load_planner(bundle, device='cuda', backend='cuda_graph')
    assert fast.backend == 'cuda_graph' and not fast.fallback_reasons
    assert_same_plans(fast, plan_sequence(fast), plan_sequence(eager))


@CUDA
def test_cuda_graph_captures_again_for_a_new_horizon():
    stage = refine_stage().cuda()
    graph = CudaGraphStage(stage)
    for horizon in (8, 16, 8):
        inputs = [x.cuda() for x in refine_inputs(horizon, seed=horizon)]
        out = graph(*inputs).clone()
        torch.testing.assert_close(out, stage(*inputs), rtol=0, atol=refine_atol(stage))
    assert graph.captures == 2
