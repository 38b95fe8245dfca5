"""The seed baselines: guided and warm-start sampling, DMEMM's Eq. 8, losses, bundles, planners."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from test_bundle_planner import ENV_ID, GOAL, OBS, tiny_config, write_bundle
from test_schedule import LinearEps, schedule

from diffusion_planner_ros.config import (DynamicsConfig, ExperimentConfig, MethodConfig,
                                          PolicyConfig, ScheduleConfig, TrainConfig)
from diffusion_planner_ros.data.minari_io import Episode
from diffusion_planner_ros.data.sequence import SequenceDataset
from diffusion_planner_ros.diffusion import DDPMSchedule, sample
from diffusion_planner_ros.diffusion.modulation import one_shot_denoise, reverse_mean_chain
from diffusion_planner_ros.diffusion.sampling import denoise, shift_plan, warm_start
from diffusion_planner_ros.models import METHOD_COMPONENTS
from diffusion_planner_ros.planning import (BCPlanner, DecisionDiffuserPlanner,
                                            JointDiffusionPlanner, TrajectoryDiffuserPlanner,
                                            load_planner)
from diffusion_planner_ros.planning.bundle import derive_bundle
from diffusion_planner_ros.losses import component_setups
from diffusion_planner_ros.trainer import ComponentTrainer, DistributedContext


# Sampling ---------------------------------------------------------------------------------
def test_value_guidance_moves_the_sample_toward_higher_value():
    s, model = schedule(num_steps=20), LinearEps()
    x = torch.randn(3, 8, 4)

    def value(y):  # J = sum of the first channel
        return y[..., 0].sum()

    def guide(mean, t):
        return torch.autograd.functional.jacobian(value, mean)

    plain = denoise(model, s, x, 19, torch.zeros(3, 2), 0.0, None,
                    torch.Generator().manual_seed(1))
    guided = denoise(model, s, x, 19, torch.zeros(3, 2), 0.0, None,
                     torch.Generator().manual_seed(1), guide=guide, guide_scale=5.0)
    assert value(guided) > value(plain) + 0.1
    # Only the guided channel moved beyond what the coupling of the model carries.
    assert torch.isfinite(guided).all()


def test_inpainted_entries_stay_fixed_with_guidance_and_free_actions():
    s, model = schedule(num_steps=10), LinearEps()
    start = torch.tensor([0.1, -0.2, float('nan'), float('nan')])  # state dims, free actions
    goal = torch.tensor([0.5, 0.6, float('nan'), float('nan')])
    out = sample(model, s, (2, 8, 4), torch.zeros(2, 2), 0.0, {0: start, 7: goal},
                 torch.Generator().manual_seed(0), guide=lambda m, t: torch.ones_like(m),
                 guide_scale=1.0)
    assert torch.equal(out[:, 0, :2], start[:2].expand(2, 2))
    assert torch.equal(out[:, 7, :2], goal[:2].expand(2, 2))
    assert torch.isfinite(out).all()


class OracleEps(torch.nn.Module):
    """The noise that separates x from a known clean plan: eps = (x - sqrt(abar) x0) / ..."""

    def __init__(self, s, x0):
        super().__init__()
        self.s, self.x0 = s, x0

    def forward(self, x, k, condition, mask):
        a = self.s.sqrt_alphas_cumprod[k].view(-1, 1, 1)
        b = self.s.sqrt_one_minus_alphas_cumprod[k].view(-1, 1, 1)
        return (x - a * self.x0) / b


def test_shift_plan_drops_executed_steps_and_repeats_the_last():
    plan = torch.arange(12.0).view(1, 4, 3)
    shifted = shift_plan(plan, 1)
    assert torch.equal(shifted[0, :3], plan[0, 1:])
    assert torch.equal(shifted[0, 3], plan[0, 3])
    assert torch.equal(shift_plan(plan, 0), plan)
    with pytest.raises(ValueError):
        shift_plan(plan, 4)


@pytest.mark.parametrize('steps', [1, 3, 20])
def test_warm_start_without_added_noise_returns_the_plan(steps):
    s = schedule(num_steps=20)
    previous = torch.rand(1, 8, 4) * 1.6 - 0.8
    # Zero levels: nothing is noised, the shifted plan comes back exactly.
    out = warm_start(LinearEps(), s, previous, 2, 0, torch.zeros(1, 2), 0.0)
    assert torch.equal(out, shift_plan(previous, 2))
    # A model that knows the plan and no sampling noise: the plan comes back at any level.
    target = shift_plan(previous, 2)
    out = warm_start(OracleEps(s, target), s, previous, 2, steps, torch.zeros(1, 2), 0.0,
                     generator=torch.Generator().manual_seed(0), noise_scale=0.0)
    assert torch.allclose(out, target, atol=1e-4)


# DMEMM Proposition 1 ----------------------------------------------------------------------
def toy_schedule():
    return DDPMSchedule(ScheduleConfig(num_steps=6, beta_schedule='linear', clip_denoised=False))


def test_one_shot_denoise_matches_the_step_by_step_reverse_means():
    s = toy_schedule()
    torch.manual_seed(0)
    table = torch.randn(6, 1, 5, 3)  # a noise model that depends on the level only

    def epsilon(x, levels, rows):
        return table[levels, 0]

    x0, noise = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    levels = torch.tensor([0, 2, 5, 3])
    one_shot = one_shot_denoise(epsilon, s, x0, levels, noise)
    for row, level in enumerate(levels.tolist()):
        x_t = s.add_noise(x0[row:row + 1], noise[row:row + 1], level)
        chain = reverse_mean_chain(epsilon, s, x_t, level)
        assert torch.allclose(one_shot[row:row + 1], chain, atol=1e-4)
    # The chain itself is the schedule's reverse step without noise or clipping (Eq. 4).
    x_t = torch.randn(1, 5, 3)
    stepped = x_t
    for level in range(3, -1, -1):
        stepped = s.step(table[level, 0][None], level, stepped).prev_sample
    assert torch.allclose(reverse_mean_chain(epsilon, s, x_t, 3), stepped, atol=1e-4)


def test_sampled_levels_estimate_the_full_sum_without_bias():
    s = toy_schedule()
    torch.manual_seed(0)
    table = torch.randn(6, 1, 5, 3)

    def epsilon(x, levels, rows):
        return table[levels, 0]

    x0, noise = torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    levels = torch.tensor([5])
    exact = one_shot_denoise(epsilon, s, x0, levels, noise)
    generator = torch.Generator().manual_seed(3)
    draws = torch.stack([one_shot_denoise(epsilon, s, x0, levels, noise, terms=2,
                                          generator=generator) for _ in range(3000)])
    # The toy schedule's last levels weigh terms by ~100: compare relative to that size.
    scale = exact.abs().max()
    assert torch.allclose(draws.mean(0), exact, atol=0.02 * scale)
    assert draws.std(0).max() > 0.1 * scale  # it really is an estimate


def test_with_the_true_noise_the_one_shot_estimate_is_noise_at_the_top_levels():
    """Why modulation_levels defaults to the low levels (MethodConfig).

    Even a noise model that returns the very noise of each forward copy leaves Eq. 8's estimate
    off tau_0 by (sqrt((1 - abar_k) / abar_k) - sum_i c_i) eps: small at the low levels, many
    times the noise at the top ones, where the modulation losses would train on noise.
    """
    s = DDPMSchedule(ScheduleConfig(num_steps=64))
    abar = s.alphas_cumprod
    x0, noise = torch.randn(64, 5, 3), torch.randn(64, 5, 3)

    def true_noise(x, levels, rows):
        shape = (-1, 1, 1)
        return (x - abar[levels].sqrt().view(shape) * x0[rows]) \
            / (1.0 - abar[levels]).sqrt().view(shape)

    error = one_shot_denoise(true_noise, s, x0, torch.arange(64), noise) - x0
    relative = (error.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)).tolist()
    assert max(relative[:10]) < 0.3
    assert min(relative[48:]) > 2.0 and relative[-1] > 50.0


class RecordingTransition(torch.nn.Module):
    """A transition model that predicts no motion and records the states it is asked about."""

    def __init__(self, record: list):
        super().__init__()
        self.record = record
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, states, actions):
        self.record.append(states.detach().clone())
        return (states + self.w)[None], None


@pytest.mark.parametrize('prediction', ['epsilon', 'x0'])
def test_a_perfect_network_predicts_tau_0_at_every_level_where_eq8_gives_noise(prediction):
    """modulation_trajectory 'predicted': the clean estimate from tau_k, bounded at any level."""
    from diffusion_planner_ros.losses import dmemm_loss
    s = DDPMSchedule(ScheduleConfig(num_steps=64, prediction=prediction))
    window = torch.randn(64, 6, 6)
    batch = {'states': window[..., :4], 'actions': window[..., 4:],
             'conditions': torch.arange(64.0)[:, None, None].expand(64, 6, 2),  # row ids
             'rewards': torch.zeros(64, 6)}
    scored = []

    class Perfect(torch.nn.Module):   # knows each row's tau_0, so it reads back its noise too
        def forward(self, x, k, condition, mask):
            clean, abar = window[condition[:, 0].long()], s.alphas_cumprod[k].view(-1, 1, 1)
            return clean if prediction == 'x0' else (x - abar.sqrt() * clean) / (1 - abar).sqrt()

    torch.manual_seed(0)
    for trajectory in ('predicted', 'one_shot'):
        method = MethodConfig(name='dmemm', reward_weighting=False, reward_weight=0.0,
                              modulation_terms=0, modulation_levels=0,
                              modulation_trajectory=trajectory)
        dmemm_loss(Perfect(), batch, s, 4, method, RecordingTransition(scored), None, None)
    predicted, one_shot = (states - window[:, :-1, :4] for states in scored)
    assert predicted.abs().max() < 1e-3
    assert one_shot.abs().max() > 1.0   # Eq. 8 at the top levels, even for this network
    with pytest.raises(ValueError, match='modulation_trajectory'):
        MethodConfig(name='dmemm', modulation_trajectory='exact')


# Losses decrease on a tiny dataset --------------------------------------------------------
def tiny_episodes(count=6, length=60, seed=0):
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(count):
        goal = rng.uniform(-1, 1, 2)
        position, velocity = rng.uniform(-1, 1, 2), np.zeros(2)
        observations, actions = [], []
        for _ in range(length):
            action = np.clip(2.0 * (goal - position) - velocity + 0.1 * rng.normal(size=2), -1, 1)
            observations.append(np.concatenate([position, velocity]))
            actions.append(action)
            velocity = 0.9 * velocity + 0.1 * action
            position = position + 0.1 * velocity
        observations.append(np.concatenate([position, velocity]))
        observations = np.array(observations)
        episodes.append(Episode(observations, np.array(actions), np.zeros(length),
                                observations[:, :2].copy(), np.tile(goal, (length + 1, 1))))
    return episodes


def method_config(method: str, steps: int = 150) -> ExperimentConfig:
    base = tiny_config()
    return ExperimentConfig(
        method=MethodConfig(name=method, modulation_terms=2), data=base.data,
        prior=base.prior, unet=base.unet, planner=base.planner,
        dynamics=DynamicsConfig(ensemble_size=2, hidden_dim=32, n_hidden=2),
        policy=PolicyConfig(hidden_dim=32, n_hidden=2),
        training=TrainConfig(prior_steps=steps, diffuser_steps=steps,
                             inverse_dynamics_steps=steps, value_steps=steps,
                             dynamics_steps=steps, policy_steps=steps, batch_size=16,
                             learning_rate=1e-3, log_every=25, checkpoint_every=10_000,
                             device='cpu'))


@pytest.mark.slow
@pytest.mark.parametrize('method', ['diffuser', 'dmemm', 'bc', 'decision_diffuser'])
def test_each_methods_losses_decrease_on_a_tiny_dataset(method, tmp_path):
    from diffusion_planner_ros.models import Dims, build_models
    torch.manual_seed(0)
    config = method_config(method)
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    s = DDPMSchedule(config.schedule)
    setups = component_setups(config, data, s, models)
    assert list(setups) == list(METHOD_COMPONENTS[method])
    for name, setup in setups.items():
        trainer = ComponentTrainer(name, models[name], setup.loss_fn, setup.sample_batch,
                                   1e-3, torch.device('cpu'), tmp_path / name,
                                   DistributedContext(), setup.ema_decay,
                                   setup.warmup_loss_fn, setup.warmup_steps)
        losses = trainer.train(setup.steps, 0, 25, 10_000, progress=False)
        assert losses[-1] < losses[0], (name, losses)


def test_dmemm_modulation_joins_at_its_start_step_across_a_resume(tmp_path):
    from diffusion_planner_ros.models import Dims, build_models
    config = method_config('dmemm', steps=5)
    config = dataclasses.replace(config, method=dataclasses.replace(config.method,
                                                                    modulation_start=3))
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    setup = component_setups(config, data, DDPMSchedule(config.schedule), models)['diffuser']
    assert setup.warmup_steps == 3
    warm = setup.warmup_loss_fn.keywords['method']
    assert (warm.transition_weight, warm.reward_weight) == (0.0, 0.0) and warm.reward_weighting
    assert setup.loss_fn.keywords['method'] == config.method
    used = []

    def recorded(name, loss_fn):
        def loss(network, batch):
            used.append(name)
            return loss_fn(network, batch)
        return loss

    def trainer():
        return ComponentTrainer('diffuser', models['diffuser'], recorded('full', setup.loss_fn),
                                setup.sample_batch, 1e-3, torch.device('cpu'), tmp_path,
                                DistributedContext(), None,
                                recorded('warm', setup.warmup_loss_fn), setup.warmup_steps)

    trainer().train(2, 0, 1, 2, progress=False)
    resumed = trainer()
    assert resumed.try_resume() and resumed.step == 2
    resumed.train(5, 0, 1, 2, progress=False)
    assert used == ['warm', 'warm', 'warm', 'full', 'full']
    with pytest.raises(ValueError, match='modulation_start -1 must be >= 0'):
        MethodConfig(name='dmemm', modulation_start=-1)


def test_a_run_without_a_progress_bar_logs_every_log_every_steps(tmp_path):
    from diffusion_planner_ros.models import Dims, build_models
    torch.manual_seed(0)
    config = method_config('bc', steps=60)
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    setup = component_setups(config, data, DDPMSchedule(config.schedule), models)['policy']
    trainer = ComponentTrainer('policy', models['policy'], setup.loss_fn, setup.sample_batch,
                               1e-3, torch.device('cpu'), tmp_path, DistributedContext())
    lines = []
    losses = trainer.train(60, 0, 25, 10_000, progress=False, log=lines.append)
    # Steps 25 and 50, and the last step.
    assert [line.split(':')[0] for line in lines] == [
        'policy step 25/60', 'policy step 50/60', 'policy step 60/60']
    for line, loss in zip(lines, losses):
        assert f'loss {loss:.4f}' in line and line.endswith('s/step')


def test_a_training_log_line_reaches_stdout_in_one_write(monkeypatch):
    # Two ranks share stdout: a line written in two pieces can be torn by the other rank's line
    # (the checksum test once read 'rank 1 prior checksum 125.756935prior').
    from diffusion_planner_ros import pipeline

    class Recorder:
        def __init__(self):
            self.writes, self.flushes = [], 0

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            self.flushes += 1

    recorder = Recorder()
    monkeypatch.setattr(sys, 'stdout', recorder)
    pipeline.write_line('rank 1 prior checksum 125.756935')
    pipeline.write_line('prior: final loss 0.0010')
    assert recorder.writes == ['rank 1 prior checksum 125.756935\n',
                               'prior: final loss 0.0010\n']
    assert recorder.flushes == 2


def test_the_candidate_critic_learns_and_joins_the_bundle(tmp_path):
    import dataclasses

    from diffusion_planner_ros.models import Dims, build_models
    torch.manual_seed(0)
    base = method_config('trajectory_diffuser', steps=300)
    config = dataclasses.replace(base, method=MethodConfig(critic=True),
                                 training=dataclasses.replace(base.training, critic_steps=300))
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    setups = component_setups(config, data, DDPMSchedule(config.schedule), models)
    assert list(setups) == [*METHOD_COMPONENTS['trajectory_diffuser'], 'critic']
    critic = setups['critic']
    trainer = ComponentTrainer('critic', models['critic'], critic.loss_fn, critic.sample_batch,
                               1e-3, torch.device('cpu'), tmp_path, DistributedContext())
    losses = trainer.train(critic.steps, 0, 25, 10_000, progress=False)
    assert losses[-1] < 0.5 * losses[0], losses
    # A bundle of the config carries the critic, and a derived Decision Diffuser bundle too.
    path = write_bundle(tmp_path / 'td', config)
    assert (path / 'critic.safetensors').is_file()
    derived = derive_bundle(path, 'decision_diffuser', tmp_path / 'dd')
    assert (derived / 'critic.safetensors').is_file()
    # Eager: capturing Decision Diffuser's 100 levels for ONNX Runtime takes minutes here, and
    # test_decision_diffuser_sampling_stage_matches_eager covers that path.
    derived_planner = load_planner(derived, candidates=3, backend='eager')
    assert derived_planner.bundle.models['critic'] is not None
    (path / 'critic.safetensors').unlink()
    with pytest.raises(ValueError, match='missing critic.safetensors'):
        load_planner(path)


@pytest.mark.parametrize('method', ['diffuser', 'dmemm', 'bc'])
def test_a_critic_is_refused_where_the_method_ranks_by_its_objective(method):
    with pytest.raises(ValueError, match='method.critic applies to'):
        MethodConfig(name=method, critic=True)


def test_dmemm_modulation_terms_reach_the_noise_model_only():
    from diffusion_planner_ros.models import Dims, build_models
    from diffusion_planner_ros.losses import dmemm_loss
    config = method_config('dmemm')
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    batch = data.sample_windows(np.random.default_rng(0), 8, 8, with_actions=True)
    s = DDPMSchedule(config.schedule)
    torch.manual_seed(0)
    full = dmemm_loss(models['diffuser'], batch, s, 4, config.method, models['transition'],
                      models['reward'], data)
    full.backward()
    assert all(p.grad is None for p in models['transition'].parameters())
    assert all(p.grad is None for p in models['reward'].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in models['diffuser'].parameters())
    # Without the modulation terms the loss is the (weighted) diffusion loss alone.
    bare = MethodConfig(name='dmemm', transition_weight=0.0, reward_weight=0.0)
    torch.manual_seed(0)
    plain = dmemm_loss(models['diffuser'], batch, s, 4, bare, models['transition'],
                       models['reward'], data)
    assert not torch.isclose(full, plain)


def test_the_reward_model_is_bounded_so_modulation_cannot_run_off_the_data():
    from diffusion_planner_ros.models import Dims, build_models
    from diffusion_planner_ros.losses import modulation_loss, reward_loss
    config = method_config('dmemm')
    data = SequenceDataset(tiny_episodes(), 'goal')
    models = build_models(config, Dims(data.obs_dim, data.action_dim, data.cond_dim))
    reward = models['reward']
    torch.manual_seed(0)
    # Far outside the data, where a linear head grows without limit, R stays in [0, 1].
    far = 1e4 * torch.randn(64, 8, data.obs_dim)
    actions = 1e4 * torch.randn(64, 8, data.action_dim)
    condition = 1e4 * torch.randn(64, data.cond_dim)
    values = reward(far, actions, condition[:, None].expand(-1, 8, -1))
    assert values.min() >= 0.0 and values.max() <= 1.0
    # So the reward term of L_rd can lower the loss by at most lambda_rd per step.
    bare = MethodConfig(name='dmemm', transition_weight=0.0, reward_weight=0.05)
    term = modulation_loss(far, actions, condition, bare, models['transition'], reward)
    assert -0.05 * 8 <= term.item() <= 0.0
    # And it still fits the per-step reward: regression on the data lowers its loss.
    batch = data.sample_windows(np.random.default_rng(0), 64, 4, with_actions=True)
    optimiser = torch.optim.Adam(reward.parameters(), lr=1e-2)
    first = reward_loss(reward, batch, data).item()
    for _ in range(100):
        optimiser.zero_grad()
        loss = reward_loss(reward, batch, data)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first


# Bundles and planners ---------------------------------------------------------------------
def method_bundle(path, method, **planner):
    config = method_config(method)
    if planner:
        import dataclasses
        config = dataclasses.replace(config, planner=dataclasses.replace(config.planner,
                                                                         **planner))
    return write_bundle(path, config)


@pytest.mark.parametrize('method,cls', [
    ('trajectory_diffuser', TrajectoryDiffuserPlanner),
    ('decision_diffuser', DecisionDiffuserPlanner),
    ('diffuser', JointDiffusionPlanner), ('dmemm', JointDiffusionPlanner), ('bc', BCPlanner)])
def test_load_planner_runs_the_method_the_bundle_records(method, cls, tmp_path):
    path = method_bundle(tmp_path / method, method, replan_every=3)
    meta = json.loads((path / 'config.json').read_text())
    assert meta['method'] == method and meta['config']['method']['name'] == method
    # Which planner runs is the point here; test_fast_path checks the captured paths (Trajectory
    # and Decision Diffuser; the others have none) against eager.
    planner = load_planner(path, backend='eager')
    assert type(planner) is cls and planner.method == method
    plan = planner.plan(OBS, goal=GOAL)
    chunk = 1 if method == 'bc' else 3
    assert plan.actions.shape == (chunk, 2) and np.all(np.abs(plan.actions) <= 1.0)
    assert np.allclose(plan.refined_states[0], OBS, atol=1e-5)
    assert (plan.prior_states is not None) == (method == 'trajectory_diffuser')
    assert plan.timings_ms['total'] > 0


def test_a_dmemm_bundle_from_before_the_bounded_reward_head_keeps_its_linear_head(tmp_path):
    from diffusion_planner_ros.planning.bundle import load_bundle, read_config
    path = method_bundle(tmp_path / 'dmemm', 'dmemm')
    assert load_bundle(path).config.dynamics.reward_head == 'sigmoid'
    assert load_bundle(path).models['reward'].bounded
    meta = json.loads((path / 'config.json').read_text())
    del meta['config']['dynamics']['reward_head']     # as written before the field existed
    (path / 'config.json').write_text(json.dumps(meta))
    old = load_bundle(path)
    assert old.config.dynamics.reward_head == 'linear' and not old.models['reward'].bounded
    assert read_config(path).dynamics.reward_head == 'linear'    # training from the bundle
    with pytest.raises(ValueError, match='reward_head'):
        DynamicsConfig(reward_head='tanh')


def test_a_planner_class_refuses_another_methods_bundle(tmp_path):
    path = method_bundle(tmp_path / 'd', 'diffuser')
    with pytest.raises(ValueError, match="holds method 'diffuser'"):
        TrajectoryDiffuserPlanner.from_bundle(path)
    meta = json.loads((path / 'config.json').read_text())
    meta['method'] = 'dmemm'
    (path / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='disagrees with config.method.name'):
        load_planner(path)
    meta['method'] = 'magic'
    (path / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'method' is 'magic'"):
        load_planner(path)


def test_decision_diffuser_bundle_shares_trajectory_diffusers_networks(tmp_path):
    source = method_bundle(tmp_path / 'td', 'trajectory_diffuser')
    derived = derive_bundle(source, 'decision_diffuser', tmp_path / 'dd')
    assert sorted(p.name for p in derived.glob('*.safetensors')) == [
        'diffuser.safetensors', 'inverse_dynamics.safetensors']
    for name in ('diffuser', 'inverse_dynamics'):
        assert (derived / f'{name}.safetensors').read_bytes() == \
            (source / f'{name}.safetensors').read_bytes()
    assert type(load_planner(derived, backend='eager')) is DecisionDiffuserPlanner
    with pytest.raises(ValueError, match='decision_diffuser planner plans every time afresh'):
        load_planner(derived, warm_start_steps=2)
    with pytest.raises(ValueError, match='cannot be derived'):
        derive_bundle(source, 'diffuser', tmp_path / 'x')


def test_joint_planner_warm_start_and_candidates(tmp_path):
    path = method_bundle(tmp_path / 'd', 'diffuser', warm_start_steps=2, candidates=4,
                         replan_every=2)
    planner = load_planner(path)
    first = planner.plan(OBS, goal=GOAL)
    assert 'sample' in first.timings_ms and 'rank' in first.timings_ms
    second = planner.plan(OBS + 0.01, goal=GOAL)
    assert np.allclose(second.refined_states[0], OBS + 0.01, atol=1e-5)
    # Warm start runs 2 levels instead of K: much less work than the first plan.
    cold = load_planner(path, warm_start_steps=0)
    cold.plan(OBS, goal=GOAL)
    planner.reset()
    assert planner._previous is None
    with pytest.raises(ValueError, match='warm_start_steps'):
        load_planner(path, warm_start_steps=1000)


def test_dmemm_guidance_raises_the_objective(tmp_path):
    path = method_bundle(tmp_path / 'm', 'dmemm')
    plain = load_planner(path, value_guidance_scale=0.0)
    guided = load_planner(path, value_guidance_scale=0.05)
    scores = []
    for planner in (plain, guided):
        plan = planner.plan(OBS, goal=GOAL)
        assert np.all(np.isfinite(plan.actions))
        x = planner._previous
        condition = planner._tensor(planner._goals.normalize(GOAL))[None]
        scores.append(float(planner.objective(x, 0, condition).detach()))
    assert scores[1] > scores[0]
    # A scale that makes the guided chain diverge is reported, never turned into actions.
    with pytest.raises(RuntimeError, match='value_guidance_scale'):
        load_planner(path, value_guidance_scale=1e3).plan(OBS, goal=GOAL)


def test_unknown_env_for_bundle_is_refused(tmp_path):
    path = method_bundle(tmp_path / 'b', 'bc')
    with pytest.raises(ValueError, match='trained for env'):
        load_planner(path, expected_env_id='Hopper-v5')
    assert ENV_ID in (path / 'config.json').read_text()


def test_decision_diffuser_samples_with_fewer_strided_steps(tmp_path):
    source = method_bundle(tmp_path / 'td', 'trajectory_diffuser')
    derived = derive_bundle(source, 'decision_diffuser', tmp_path / 'dd')
    calls = []
    for steps, backend in ((0, 'eager'), (5, 'eager'), (5, 'onnx')):
        planner = load_planner(derived, backend=backend, sample_steps=steps)
        if backend == 'eager':
            network = planner.diffuser.forward
            planner.diffuser.forward = lambda *a, f=network: calls.append(1) or f(*a)
        calls.clear()
        plan = planner.plan(OBS, goal=GOAL)
        assert np.allclose(plan.refined_states[0], OBS, atol=1e-5)
        assert np.all(np.isfinite(plan.refined_states))
        if backend == 'eager':
            assert len(calls) == (steps or planner.levels)
    with pytest.raises(ValueError, match='sample_steps 101 exceeds'):
        load_planner(derived, sample_steps=101)
