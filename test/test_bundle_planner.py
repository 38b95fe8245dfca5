"""Bundle round trip, planner outputs, and the errors bad input gets."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import NETWORK_ATOL, reverse_chain_atol

from diffusion_planner_ros.config import (DataConfig, DynamicsConfig, ExperimentConfig,
                                          MethodConfig, PlannerConfig, PriorConfig, UnetConfig)
from diffusion_planner_ros.data.normalizer import Normalizer
from diffusion_planner_ros.planning import (TrajectoryDiffuserPlanner, load_bundle, load_planner,
                                            save_bundle)
from diffusion_planner_ros.planning.bundle import (Dims, build_models, derive_bundle,
                                                   untrained_bundle)
from diffusion_planner_ros.planning.stages import InverseStage, RankStage

ENV_ID = 'PointMaze_UMaze-v3'


def tiny_config(**planner) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(dataset_id='test/tiny-v0', env_id=ENV_ID, horizon=8, history=3),
        prior=PriorConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0),
        unet=UnetConfig(dim=8, dim_mults=(1, 2), embed_dim=8, embed_hidden=16),
        planner=PlannerConfig(refine_steps=3, device='cpu', **planner),
    )


def write_bundle(path, config=None):
    config = config or tiny_config()
    torch.manual_seed(0)
    dims = Dims(4, 2, 2)
    normalizers = {
        'states': Normalizer(np.array([-2.0, -2.0, -5.0, -5.0]), np.array([2.0, 2.0, 5.0, 5.0])),
        'actions': Normalizer(-np.ones(2), np.ones(2)),
        'goals': Normalizer(np.array([-2.0, -2.0]), np.array([2.0, 2.0])),
    }
    save_bundle(path, config, ENV_ID, dims, -np.ones(2), np.ones(2), normalizers,
                build_models(config, dims))
    return path


@pytest.fixture
def bundle_dir(tmp_path):
    return write_bundle(tmp_path / 'bundle')


OBS = np.array([0.5, -0.3, 0.1, 0.0])
GOAL = np.array([1.0, 1.0])


def eager_actions(planner, plan) -> np.ndarray:
    """The eager inverse dynamics' actions for a plan's own states, as plan() returns them."""
    bundle = planner.bundle
    states = torch.as_tensor(bundle.normalizers['states'].normalize(plan.refined_states),
                             dtype=torch.float32, device=planner.device)
    with torch.inference_mode():
        actions = InverseStage(bundle.models['inverse_dynamics'], len(plan.actions))(states[None])
    return np.clip(bundle.normalizers['actions'].unnormalize(actions.cpu().numpy().astype(float)),
                   bundle.action_low, bundle.action_high)


def assert_same_plans(planner, plans, reference):
    """A captured planner's plans against eager ones, each to the bound its path allows.

    States are compared in normalised units, where conftest.reverse_chain_atol bounds what the
    reverse steps make of the backends' rounding (its start: the prior's difference). The
    prior's rollout takes no reverse step: one network call's tolerance (it differs by ~1e-6).
    Actions are one inverse-dynamics call: the captured planner's, against the eager inverse
    dynamics on its own plan.
    """
    config, normalizers = planner.config, planner.bundle.normalizers
    states, actions = normalizers['states'], normalizers['actions']
    for plan, expected in zip(plans, reference):
        if planner.method == 'decision_diffuser':  # all K levels from noise, no prior
            prior, steps = None, planner.levels
        else:
            prior, steps = NETWORK_ATOL, config.refine_steps
            np.testing.assert_allclose(states.normalize(plan.prior_states),
                                       states.normalize(expected.prior_states), rtol=0,
                                       atol=prior)
        refined = (reverse_chain_atol(planner.schedule, steps, config.guidance_scale,
                                      start=prior or 0.0) if steps else prior)
        np.testing.assert_allclose(states.normalize(plan.refined_states),
                                   states.normalize(expected.refined_states), rtol=0,
                                   atol=refined)
        np.testing.assert_allclose(actions.normalize(plan.actions),
                                   actions.normalize(eager_actions(planner, plan)), rtol=0,
                                   atol=NETWORK_ATOL)


@pytest.mark.slow
def test_save_and_load_give_identical_plans(bundle_dir, tmp_path):
    first = TrajectoryDiffuserPlanner.from_bundle(bundle_dir)
    copy = shutil.copytree(bundle_dir, tmp_path / 'copy')
    second = TrajectoryDiffuserPlanner.from_bundle(copy)
    for planner in (first, second):
        planner.reset()
    for _ in range(3):
        a, b = first.plan(OBS, goal=GOAL), second.plan(OBS, goal=GOAL)
        assert np.array_equal(a.refined_states, b.refined_states)
        assert np.array_equal(a.action, b.action)


def test_plan_outputs(bundle_dir):
    planner = TrajectoryDiffuserPlanner.from_bundle(bundle_dir, replan_every=4)
    plan = planner.plan(OBS, goal=GOAL)
    assert plan.prior_states.shape == (8, 4) and plan.refined_states.shape == (8, 4)
    assert plan.actions.shape == (4, 2) and np.array_equal(plan.action, plan.actions[0])
    assert np.all(np.abs(plan.actions) <= 1.0)
    # The plan starts at the current state, before and after refinement.
    assert np.allclose(plan.prior_states[0], OBS, atol=1e-5)
    assert np.allclose(plan.refined_states[0], OBS, atol=1e-5)
    assert not np.allclose(plan.prior_states, plan.refined_states)
    assert set(plan.timings_ms) == {'prior', 'refine', 'inverse', 'total'}


def test_prior_only_plan_is_the_prior_trajectory(bundle_dir):
    planner = TrajectoryDiffuserPlanner.from_bundle(bundle_dir, refine_steps=0)
    plan = planner.plan(OBS, goal=GOAL)
    assert np.array_equal(plan.prior_states, plan.refined_states)


def test_goal_inpainting_fixes_the_last_planned_position(tmp_path):
    bundle = write_bundle(tmp_path / 'inpaint', tiny_config(inpaint_goal=True))
    plan = TrajectoryDiffuserPlanner.from_bundle(bundle).plan(OBS, goal=GOAL)
    assert np.allclose(plan.refined_states[-1, :2], GOAL, atol=1e-5)


def test_reset_makes_planning_repeatable(bundle_dir):
    planner = TrajectoryDiffuserPlanner.from_bundle(bundle_dir)
    first = [planner.plan(OBS, goal=GOAL).action for _ in range(2)]
    planner.reset()
    second = [planner.plan(OBS, goal=GOAL).action for _ in range(2)]
    assert np.array_equal(np.array(first), np.array(second))


@pytest.mark.parametrize('observation,message', [
    (np.zeros(3), r'observation must have shape \(4,\)'),
    (np.zeros((1, 4)), r'observation must have shape \(4,\)'),
    (np.array([0.0, np.nan, 0.0, 0.0]), 'NaN or inf'),
    (np.array([0.0, np.inf, 0.0, 0.0]), 'NaN or inf'),
])
def test_bad_observations_are_refused(bundle_dir, observation, message):
    planner = TrajectoryDiffuserPlanner.from_bundle(bundle_dir)
    with pytest.raises(ValueError, match=message):
        planner.plan(observation, goal=GOAL)


def test_bad_goals_are_refused(bundle_dir):
    planner = TrajectoryDiffuserPlanner.from_bundle(bundle_dir)
    with pytest.raises(ValueError, match='goal-conditioned'):
        planner.plan(OBS)
    with pytest.raises(ValueError, match=r'goal must have shape \(2,\)'):
        planner.plan(OBS, goal=np.zeros(3))
    with pytest.raises(ValueError, match='NaN or inf'):
        planner.plan(OBS, goal=np.array([np.nan, 0.0]))


def test_missing_files_are_named(bundle_dir):
    (bundle_dir / 'diffuser.safetensors').unlink()
    with pytest.raises(ValueError, match='missing diffuser.safetensors'):
        load_bundle(bundle_dir)
    with pytest.raises(ValueError, match='does not exist'):
        load_bundle(bundle_dir / 'nowhere')


def test_bundle_for_another_env_is_refused(bundle_dir):
    with pytest.raises(ValueError, match="trained for env 'PointMaze_UMaze-v3'"):
        load_bundle(bundle_dir, expected_env_id='PointMaze_Medium-v3')


def test_wrong_types_in_config_json_are_named(bundle_dir):
    path = bundle_dir / 'config.json'
    meta = json.loads(path.read_text())
    meta['config']['data']['horizon'] = 'sixteen'
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='config.json'):
        load_bundle(bundle_dir)


def test_unknown_config_key_in_bundle_is_named(bundle_dir):
    path = bundle_dir / 'config.json'
    meta = json.loads(path.read_text())
    meta['config']['planner']['guidance'] = 1.0
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="guidance"):
        load_bundle(bundle_dir)


def test_truncated_weights_are_named(bundle_dir):
    weights = bundle_dir / 'prior.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match='prior.safetensors is not a readable safetensors'):
        load_bundle(bundle_dir)


def test_weights_of_another_architecture_are_named(bundle_dir, tmp_path):
    other = tiny_config()
    other.prior.n_embd = 32
    write_bundle(tmp_path / 'other', other)
    shutil.copy(tmp_path / 'other' / 'prior.safetensors', bundle_dir / 'prior.safetensors')
    with pytest.raises(ValueError, match='does not match the architecture'):
        load_bundle(bundle_dir)


def test_unknown_planner_option_and_cuda_without_gpu(bundle_dir):
    with pytest.raises(ValueError, match='unknown planner option'):
        TrajectoryDiffuserPlanner.from_bundle(bundle_dir, guidance=2.0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='no CUDA'):
            TrajectoryDiffuserPlanner.from_bundle(bundle_dir, device='cuda')


def tiny_hopper_planner(path, transition_model: bool = False):
    """An untrained returns-conditioned Hopper planner (history 3) saved at path.

    With transition_model the bundle also carries a (small) transition ensemble.
    """
    hopper = 'Hopper-v5'
    config = ExperimentConfig(
        method=MethodConfig(transition_model=transition_model),
        dynamics=DynamicsConfig(ensemble_size=2, hidden_dim=16, n_hidden=1),
        data=DataConfig(dataset_id='test/hopper-v0', env_id=hopper, condition='returns',
                        horizon=8, history=3, returns_scale=100.0),
        prior=PriorConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0),
        unet=UnetConfig(dim=8, dim_mults=(1, 2), embed_dim=8, embed_hidden=16),
        planner=PlannerConfig(refine_steps=2, device='cpu', target_return=300.0))
    torch.manual_seed(0)
    dims = Dims(11, 3, 1)
    normalizers = {'states': Normalizer(-10 * np.ones(11), 10 * np.ones(11)),
                   'actions': Normalizer(-np.ones(3), np.ones(3))}
    save_bundle(path, config, hopper, dims, -np.ones(3), np.ones(3), normalizers,
                build_models(config, dims))
    return TrajectoryDiffuserPlanner.from_bundle(path)


def test_returns_conditioned_evaluation_starts_at_the_target_and_spends_rewards(tmp_path):
    from diffusion_planner_ros.evaluation import evaluate

    hopper = 'Hopper-v5'
    planner = tiny_hopper_planner(tmp_path)
    seen, plan = [], planner.plan

    def spy(state, goal=None, returns_to_go=None):
        seen.append(returns_to_go)
        return plan(state, goal=goal, returns_to_go=returns_to_go)

    planner.plan = spy
    for target, expected in ((None, 300.0), (120.0, 120.0)):
        seen.clear()
        result = evaluate(hopper, 1, 0, planner=planner, target_return=target,
                          progress=False, max_episode_steps=6)[0]
        assert seen[0] == expected and len(seen) == result.steps
        # Each reward received is taken off the target before the next plan.
        assert expected - seen[-1] < result.episode_return and np.all(np.diff(seen) < 0)


def test_planning_from_a_recorded_state_restores_it_and_reads_the_history_first(tmp_path):
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import (restore_locomotion_state,
                                                  run_planner_from_data)

    env = make_env('Hopper-v5', max_episode_steps=5)
    recorded = [env.reset(seed=3)[0]]
    env.action_space.seed(3)
    for _ in range(6):
        recorded.append(env.step(env.action_space.sample())[0])
    recorded = np.array(recorded)
    env.reset(seed=4)
    restore_locomotion_state(env, recorded[4])
    data = env.unwrapped.data
    assert np.allclose(data.qpos[1:], recorded[4][:5]) and np.allclose(data.qvel, recorded[4][5:])
    with pytest.raises(ValueError, match='not \\(nq - 1 \\+ nv,\\)'):
        restore_locomotion_state(env, recorded[4][:5])

    planner = tiny_hopper_planner(tmp_path)
    observed, seen, plan = [], [], planner.plan

    def spy(state, goal=None, returns_to_go=None):
        seen.append(np.array(state))
        return plan(state, goal=goal, returns_to_go=returns_to_go)

    def observe_spy(state, **condition):
        observed.append(np.array(state))
        observe(state, **condition)

    planner.plan, observe = spy, planner.observe
    planner.observe = observe_spy
    result = run_planner_from_data(planner, env, recorded, 4, seed=0)
    # History 3: the two recorded states before the start are observed, not planned from;
    # planning starts at the start itself.
    assert np.allclose(np.array(observed), recorded[2:4])
    assert np.allclose(seen[0], recorded[4]) and len(seen) == result.steps == 5
    with pytest.raises(ValueError, match='outside the recorded 7 states'):
        run_planner_from_data(planner, env, recorded, 7, seed=0)


def test_an_observed_history_is_read_by_the_next_plan(bundle_dir):
    run_up, now = [OBS - 0.2, OBS - 0.1], OBS
    # Prior only: its plans are deterministic, so they show the history the prior read.
    lived, observed, fresh = (TrajectoryDiffuserPlanner.from_bundle(
        bundle_dir, refine_steps=0, backend='eager') for _ in range(3))
    for state in run_up:
        lived.plan(state, goal=GOAL)
        observed.observe(state, goal=GOAL)
    plan = observed.plan(now, goal=GOAL)
    assert np.allclose(plan.refined_states, lived.plan(now, goal=GOAL).refined_states)
    assert not np.allclose(plan.refined_states, fresh.plan(now, goal=GOAL).refined_states)
    with pytest.raises(ValueError, match='observation must have shape'):
        observed.observe(OBS[:2], goal=GOAL)


def test_candidates_without_a_critic_are_refused(bundle_dir):
    with pytest.raises(ValueError, match='no critic to rank plans'):
        TrajectoryDiffuserPlanner.from_bundle(bundle_dir, candidates=4)


class LastX(torch.nn.Module):
    """A critic that scores a plan by its last state's first dimension (times sign)."""

    def __init__(self, sign=1.0):
        super().__init__()
        self.sign = sign

    def forward(self, plans, levels, condition):
        assert torch.equal(levels, torch.zeros_like(levels))
        return self.sign * plans[:, -1, 0]


def test_rank_stage_keeps_the_plan_the_critic_scores_highest():
    plans = torch.randn(5, 8, 4)
    best = RankStage(LastX())(plans, torch.zeros(5, 2))
    assert best.shape == (1, 8, 4)
    assert torch.equal(best[0], plans[int(plans[:, -1, 0].argmax())])


def critic_bundle(path, levels=None, **planner):
    config = dataclasses.replace(tiny_config(**planner), method=MethodConfig(critic=True))
    if levels is not None:
        config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule,
                                                                          num_steps=levels))
    return write_bundle(path, config)


@pytest.mark.slow
@pytest.mark.parametrize('method', ['trajectory_diffuser', 'decision_diffuser'])
def test_candidates_are_ranked_by_the_critic_on_every_path(method, tmp_path):
    # K = 10 levels: ONNX Runtime captures Decision Diffuser's levels unrolled, and 100 of them
    # take minutes to capture here.
    path = critic_bundle(tmp_path / 'td', levels=10)
    if method == 'decision_diffuser':
        path = derive_bundle(path, method, tmp_path / 'dd')

    def planner(sign, backend):
        built = load_planner(path, candidates=4, backend=backend)
        built.bundle.models['critic'] = LastX(sign)
        built._configured()
        return built

    eager = planner(1.0, 'eager')
    plans = [eager.plan(OBS + 0.05 * i, goal=GOAL) for i in range(3)]
    assert all('rank' in plan.timings_ms for plan in plans)
    assert 'rank' not in load_planner(path, backend='eager').plan(OBS, goal=GOAL).timings_ms
    # The same four candidates (same seed), ranked the other way round.
    lowest = planner(-1.0, 'eager').plan(OBS, goal=GOAL)
    assert plans[0].refined_states[-1, 0] > lowest.refined_states[-1, 0]
    onnx = planner(1.0, 'onnx')
    for i, plan in enumerate(plans):
        assert_same_plans(onnx, [onnx.plan(OBS + 0.05 * i, goal=GOAL)], [plan])
    assert not onnx.fallback_reasons


def test_candidates_need_noise_to_differ(tmp_path):
    path = critic_bundle(tmp_path / 'td')
    with pytest.raises(ValueError, match='refine_steps 0 would be copies'):
        TrajectoryDiffuserPlanner.from_bundle(path, candidates=4, refine_steps=0)


def test_trajectory_diffuser_refuses_a_warm_start_and_checks_its_levels(bundle_dir):
    with pytest.raises(ValueError, match='warm_start_steps 2: a trajectory_diffuser planner'):
        TrajectoryDiffuserPlanner.from_bundle(bundle_dir, warm_start_steps=2)
    with pytest.raises(ValueError, match='warm_start_steps -1 must be >= 0'):
        TrajectoryDiffuserPlanner.from_bundle(bundle_dir, warm_start_steps=-1)
    with pytest.raises(ValueError, match='refine_steps 500 exceeds'):
        TrajectoryDiffuserPlanner.from_bundle(bundle_dir, refine_steps=500)


@pytest.mark.slow
def test_untrained_bundle_has_fresh_networks_of_the_asked_sizes(bundle_dir, tmp_path):
    dd = derive_bundle(bundle_dir, 'decision_diffuser', tmp_path / 'dd')
    sizes = ['prior.n_layer=2', 'unet.dim_mults=[1, 2, 4]', 'data.horizon=12']
    resized = load_bundle(untrained_bundle(bundle_dir, sizes, tmp_path / 'big'))
    source = load_bundle(bundle_dir)
    assert resized.method == 'trajectory_diffuser'
    assert len(resized.models['prior'].blocks) == 2 and resized.config.unet.dim_mults == (1, 2, 4)
    assert resized.config.planner == source.config.planner
    assert resized.config.schedule == source.config.schedule
    assert resized.normalizers['states'].to_dict() == source.normalizers['states'].to_dict()
    # Freshly initialised: the inverse dynamics keeps its size but not its weights.
    fresh = resized.models['inverse_dynamics'].state_dict()
    trained = source.models['inverse_dynamics'].state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained)
    plan = TrajectoryDiffuserPlanner.from_bundle(resized.path).plan(OBS, goal=GOAL)
    assert plan.refined_states.shape == (12, 4) and np.all(np.isfinite(plan.actions))
    # The same seed gives the same networks; a derived bundle keeps its own method.
    again = load_bundle(untrained_bundle(bundle_dir, sizes, tmp_path / 'again'))
    assert torch.equal(again.models['prior'].state_dict()['head_state.weight'],
                       resized.models['prior'].state_dict()['head_state.weight'])
    assert load_bundle(untrained_bundle(dd, sizes, tmp_path / 'dd_big')).method == \
        'decision_diffuser'


@pytest.mark.parametrize('sizes,message', [
    (['planner.refine_steps=1'], 'not a size'), (['schedule.num_steps=10'], 'not a size'),
    (['data.env_id=Hopper-v5'], 'not a size'), (['unet.dim=0'], 'unet.dim'),
    (['prior.n_embd'], 'section.key=value')])
def test_untrained_bundle_refuses_what_is_not_a_size(bundle_dir, tmp_path, sizes, message):
    with pytest.raises(ValueError, match=message):
        untrained_bundle(bundle_dir, sizes, tmp_path / 'x')
    assert not (tmp_path / 'x').exists()
