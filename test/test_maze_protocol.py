"""Diffuser's maze protocol: x0 prediction, start and goal inpainting, long windows, tracking."""

import dataclasses
import json
import subprocess

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, script_env
from maze_plan_cost import table
from plan_shape import crosses_wall
from test_baselines import OracleEps, RecordingTransition, method_config
from test_bundle_planner import ENV_ID, GOAL, OBS, write_bundle

from diffusion_planner_ros.config import (ExperimentConfig, MethodConfig, PlannerConfig,
                                          ScheduleConfig)
from diffusion_planner_ros.data.maze import MazeGrid
from diffusion_planner_ros.data.minari_io import Episode
from diffusion_planner_ros.data.sequence import STATES, SequenceDataset
from diffusion_planner_ros.diffusion import DDPMSchedule, sample
from diffusion_planner_ros.diffusion.sampling import guided_mean
from diffusion_planner_ros.envs import make_env, split_observation
from diffusion_planner_ros.losses import _noised_joint, dmemm_loss, joint_diffusion_loss
from diffusion_planner_ros.planning import load_planner


# x0 prediction ----------------------------------------------------------------------------
class OracleX0(torch.nn.Module):
    """The clean plan itself: what an x0 model that knows the data outputs."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, k, condition, mask):
        return self.x0.expand_as(x)


@pytest.mark.parametrize('clip', [False, True])
def test_x0_and_eps_prediction_give_the_same_chain_for_the_same_data(clip):
    # One clean plan is all the data: the ideal eps model and the ideal x0 model then stand for
    # the same denoiser, so every reverse step, and the sample, must agree.
    x0 = torch.rand(1, 8, 4) * 1.6 - 0.8
    schedules = {kind: DDPMSchedule(ScheduleConfig(num_steps=20, prediction=kind,
                                                   clip_denoised=clip))
                 for kind in ('epsilon', 'x0')}
    models = {'epsilon': OracleEps(schedules['epsilon'], x0), 'x0': OracleX0(x0)}
    draws = torch.randn(20, 2, 8, 4)
    out = {kind: sample(models[kind], schedules[kind], (2, 8, 4), torch.zeros(2, 2), 0.0,
                        noise_scale=1.0, draws=draws) for kind in schedules}
    assert torch.allclose(out['epsilon'], out['x0'], atol=1e-4)
    assert torch.allclose(out['x0'], x0.expand(2, 8, 4), atol=1e-4)
    # One step from the same x_t: the same mean, and each output reads back as the other.
    x_t = torch.randn(2, 8, 4)
    eps = models['epsilon'](x_t, torch.full((2,), 7), None, None)
    steps = {kind: schedules[kind].step(out_kind, 7, x_t).prev_sample
             for kind, out_kind in (('epsilon', eps), ('x0', x0.expand(2, 8, 4)))}
    assert torch.allclose(steps['epsilon'], steps['x0'], atol=1e-5)
    assert torch.allclose(schedules['x0'].epsilon(x0.expand(2, 8, 4), x_t, 7), eps, atol=1e-4)


def test_the_training_target_follows_the_prediction():
    x0, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    assert torch.equal(DDPMSchedule(ScheduleConfig(prediction='x0')).target(x0, noise), x0)
    assert torch.equal(DDPMSchedule(ScheduleConfig()).target(x0, noise), noise)
    with pytest.raises(ValueError, match="schedule.prediction 'v'"):
        ScheduleConfig(prediction='v')


# Start and goal inpainting ----------------------------------------------------------------
def test_goal_inpainting_keeps_start_and_goal_clean_at_every_training_level():
    s = DDPMSchedule(ScheduleConfig(num_steps=30))
    x0 = torch.randn(64, 8, 6)
    torch.manual_seed(0)
    t, _, x_t = _noised_joint(x0, s, 4, goal_inpainting=True)
    assert len(set(t.tolist())) > 10
    assert torch.equal(x_t[:, 0, :4], x0[:, 0, :4]) and torch.equal(x_t[:, -1, :4], x0[:, -1, :4])
    assert not torch.equal(x_t[:, -1, 4:], x0[:, -1, 4:])   # the actions stay free
    _, _, plain = _noised_joint(x0, s, 4)
    assert not torch.equal(plain[:, -1, :4], x0[:, -1, :4])


def test_goal_inpainting_leaves_the_given_states_out_of_the_loss():
    s = DDPMSchedule(ScheduleConfig(num_steps=10, prediction='x0'))
    batch = {'states': torch.rand(4, 8, 4), 'actions': torch.rand(4, 8, 2),
             'conditions': torch.zeros(4, 8, 2)}

    class Echo(torch.nn.Module):  # outputs x_t: exact wherever x_t is the clean entry
        def forward(self, x, k, condition, mask):
            return x

    class WrongAtTheEnds(Echo):  # the same, but far off on the first and last states
        def forward(self, x, k, condition, mask):
            out = x.clone()
            out[:, [0, -1], :4] = 100.0
            return out

    def loss(model, goal_inpainting):
        torch.manual_seed(1)
        return joint_diffusion_loss(model(), batch, s, 4, goal_inpainting=goal_inpainting)

    assert torch.equal(loss(WrongAtTheEnds, True), loss(Echo, True))
    assert loss(WrongAtTheEnds, False) > loss(Echo, False) + 100.0


@pytest.mark.parametrize('trajectory', ['one_shot', 'predicted'])
def test_dmemm_modulation_sees_start_and_goal_clean_and_keeps_them(monkeypatch, trajectory):
    s = DDPMSchedule(ScheduleConfig(num_steps=20, prediction='x0'))
    window = torch.rand(1, 8, 6)
    batch = {'states': window[..., :4].repeat(5, 1, 1), 'actions': window[..., 4:].repeat(5, 1, 1),
             'conditions': torch.zeros(5, 8, 2), 'rewards': torch.zeros(5, 8)}
    seen, kept = [], []

    class Recorder(torch.nn.Module):
        def forward(self, x, k, condition, mask):
            seen.append(x.detach().clone())
            return x

    for given in (True, False):
        seen.clear(), kept.clear()
        method = MethodConfig(name='dmemm', goal_inpainting=given, reward_weighting=False,
                              reward_weight=0.0, modulation_terms=2, modulation_levels=0,
                              modulation_trajectory=trajectory)
        dmemm_loss(Recorder(), batch, s, 4, method, RecordingTransition(kept), None, None)
        assert len(seen) == 2   # the diffusion loss's call and the denoised trajectory's
        if trajectory == 'predicted':   # the network's own x0 output (here its input)
            assert torch.equal(kept[0], seen[1][:, :-1, :4])
        starts, ends = (torch.cat([x[:, row, :4] for x in seen]) for row in (0, -1))
        assert torch.equal(starts, window[:, 0, :4].expand_as(starts))
        assert torch.equal(kept[0][:, 0], window[:, 0, :4].expand(5, 4))
        assert torch.equal(ends, window[:, -1, :4].expand_as(ends)) == given


def maze_config(**planner) -> ExperimentConfig:
    config = method_config('diffuser')
    return dataclasses.replace(
        config, method=dataclasses.replace(config.method, goal_inpainting=True),
        schedule=ScheduleConfig(num_steps=10, prediction='x0'),
        planner=dataclasses.replace(config.planner, value_guidance_scale=0.0, **planner))


def test_a_maze_protocol_plan_starts_now_and_ends_at_the_goal_at_rest(tmp_path):
    planner = load_planner(write_bundle(tmp_path / 'd', maze_config()), backend='eager')
    seen = []
    network = planner.diffuser.forward

    def spy(x, *args):
        seen.append(x.detach().clone())
        return network(x, *args)

    planner.diffuser.forward = spy
    plan = planner.plan(OBS, goal=GOAL)
    assert len(seen) == 10   # every level
    start = planner._states.normalize(OBS)
    end = planner._states.normalize(np.array([*GOAL, 0.0, 0.0]))
    for x in seen:
        assert np.allclose(x[0, 0, :4].numpy(), start, atol=1e-6)
        assert np.allclose(x[0, -1, :4].numpy(), end, atol=1e-6)
    assert np.allclose(plan.refined_states[0], OBS, atol=1e-5)
    assert np.allclose(plan.refined_states[-1], [*GOAL, 0.0, 0.0], atol=1e-5)


# Windows across goal switches -------------------------------------------------------------
def switching_episode() -> Episode:
    """A 60-step episode whose goal switches every 10 steps."""
    steps = 60
    positions = np.stack([np.linspace(0, 1, steps + 1), np.zeros(steps + 1)], axis=1)
    goals = np.repeat(np.arange(steps // 10 + 1)[:, None] * [1.0, 0.0], 10, axis=0)[:steps + 1]
    velocities = np.stack([np.linspace(-1, 1, steps + 1)] * 2, axis=1)
    observations = np.concatenate([positions, velocities], axis=1)
    return Episode(observations, np.zeros((steps, 2)), np.zeros(steps), positions, goals)


@pytest.mark.parametrize('span', [False, True])
def test_a_window_spans_a_goal_switch_only_when_the_option_is_on(span):
    episode = switching_episode()
    data = SequenceDataset([episode], 'goal', span_goal_switches=span)
    ends = data.segment_ends[0]
    length = 8
    spanning = [start for _, start in data.window_starts(length)
                if ends[start] < start + length - 1]
    assert bool(spanning) == span
    # Drawn windows: find each one's start by its first position.
    batch = data.sample_windows(np.random.default_rng(0), 400, length)
    firsts = data.normalizers[STATES].unnormalize(batch[STATES][:, 0].double().numpy())[:, 0]
    starts = np.rint(firsts * 60).astype(int)
    crossed = np.mean(ends[starts] < starts + length - 1)
    assert (crossed > 0.3) if span else crossed == 0.0
    # A window of a whole goal segment's length or more exists only across switches.
    if not span:
        with pytest.raises(ValueError, match='no window of 12 states'):
            data.window_starts(12)
    else:
        assert len(data.window_starts(12)) == 60 - 12 + 2


# Tracking ---------------------------------------------------------------------------------
def test_tracking_drives_the_point_mass_along_a_straight_planned_line(tmp_path):
    import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    config = maze_config(track_states=True, replan_every=1)
    planner = load_planner(write_bundle(tmp_path / 'd', config))
    env = gym.make(ENV_ID, continuing_task=True)
    state = env.reset(seed=3)[0]['observation']
    # 1 m along +x at 1 m/s from the reset state (UMaze's top corridor), then at rest.
    dt, steps = env.unwrapped.point_env.dt, 150
    travel = np.minimum(np.arange(steps) * dt, 1.0)
    line = np.zeros((steps, 4))
    line[:, 0], line[:, 1] = state[0] + travel, state[1]
    line[:, 2] = np.where(travel < 1.0, 1.0, 0.0)
    errors = []
    for target in line[1:]:
        action = planner.track(state, target)
        state = env.step(action.astype(np.float32))[0]['observation']
        errors.append(np.linalg.norm(state[:2] - target[:2]))
    env.close()
    assert max(errors) < 0.05 and errors[-1] < 0.01


def test_track_states_plans_once_per_goal_and_again_on_drift(tmp_path):
    planner = load_planner(write_bundle(tmp_path / 'd', maze_config(
        track_states=True, replan_every=1, drift_limit=0.5)), backend='eager')
    first = planner.plan(OBS, goal=GOAL)
    assert 'sample' in first.timings_ms and first.actions.shape == (1, 2)
    kept = planner.plan(first.refined_states[1], goal=GOAL)
    assert 'sample' not in kept.timings_ms
    assert np.array_equal(kept.refined_states, first.refined_states)
    # The PD command towards the plan's next state.
    expected = planner.track(first.refined_states[1], first.refined_states[2])
    assert np.allclose(kept.action, expected)
    planner.plan(first.refined_states[2], goal=GOAL + 0.5)          # a new goal
    far = planner._followed.states[1].copy()
    far[0] = planner._followed.states[:, 0].max() + 1.0
    planner.plan(far, goal=GOAL + 0.5)                               # 1 m off the path
    assert planner.replans == {'no plan': 1, 'new goal': 1, 'drift': 1}
    planner.reset()
    planner.plan(OBS, goal=GOAL)
    assert planner.replans['no plan'] == 2


@pytest.mark.parametrize('field,value,match', [
    ('drift_limit', float('nan'), 'drift_limit'), ('track_p_gain', -1.0, 'track_p_gain'),
    ('track_d_gain', float('inf'), 'track_d_gain'),
    ('value_guidance_scale', float('nan'), 'value_guidance_scale'),
    ('guidance_scale', -1.0, 'guidance_scale')])
def test_bad_protocol_settings_are_refused_with_their_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**{field: value})


def test_the_protocol_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match='replan_every 4 must be 1'):
        PlannerConfig(track_states=True, replan_every=4)
    with pytest.raises(ValueError, match='maze protocol'):
        dataclasses.replace(method_config('trajectory_diffuser'),
                            planner=PlannerConfig(track_states=True))
    with pytest.raises(ValueError, match='goal_inpainting applies to'):
        dataclasses.replace(method_config('decision_diffuser').method, goal_inpainting=True)
    with pytest.raises(ValueError, match='data.horizon 9 must be a multiple'):
        dataclasses.replace(maze_config(), data=dataclasses.replace(maze_config().data,
                                                                    horizon=9))
    path = write_bundle(tmp_path / 'd', maze_config())
    with pytest.raises(ValueError, match='replan_every'):
        load_planner(path, track_states=True, replan_every=3)


# DMEMM's guide ----------------------------------------------------------------------------
def guide_moves(planner, sigma: float) -> float:
    """The largest move of the guide on a reverse-step mean, over every level, at this sigma."""
    with torch.no_grad():
        planner.transition.max_logstd.fill_(np.log(sigma))
        planner.transition.min_logstd.fill_(np.log(sigma))
    condition = planner._tensor(planner._goals.normalize(GOAL))[None]
    guide = planner._guide(condition)
    mean = torch.randn(1, planner.horizon, planner.width,
                       generator=torch.Generator().manual_seed(0))
    config = planner.config
    return max(float((guided_mean(mean, t, planner.schedule.posterior_variance[t], guide,
                                  config.value_guidance_scale, config.guide_step_limit)
                      - mean).abs().max())
               for t in range(planner.levels))


@pytest.mark.parametrize('sigma', [1e-6, 1e-3, 1.0])
def test_the_stable_dmemm_guide_moves_each_entry_at_most_its_limit(tmp_path, sigma):
    path = write_bundle(tmp_path / 'm', method_config('dmemm'))
    stable = load_planner(path, backend='eager', value_guidance_scale=1e-3,
                          transition_guide='normalised', guide_step_limit=0.05)
    assert 0.0 < guide_moves(stable, sigma) <= 0.05 + 1e-6
    # Eq. 13 as written: the move grows as 1 / sigma^2.
    raw = load_planner(path, backend='eager', value_guidance_scale=1e-3)
    if sigma == 1e-6:
        assert guide_moves(raw, sigma) > 1e3


def test_the_guide_acts_below_guide_levels_only(tmp_path):
    planner = load_planner(write_bundle(tmp_path / 'm', method_config('dmemm')), backend='eager',
                           value_guidance_scale=1e-3, guide_levels=3)
    condition = planner._tensor(planner._goals.normalize(GOAL))[None]
    guide, mean = planner._guide(condition), torch.randn(1, planner.horizon, planner.width)
    assert all(torch.equal(guide(mean, t), torch.zeros_like(mean))
               for t in range(3, planner.levels))
    assert guide(mean, 1).abs().max() > 0
    with pytest.raises(ValueError, match='transition_guide'):
        PlannerConfig(transition_guide='magic')
    with pytest.raises(ValueError, match='guide_step_limit'):
        PlannerConfig(guide_step_limit=float('nan'))


# The shape of plans ------------------------------------------------------------------------
def test_plan_shape_sees_a_step_through_a_wall_and_not_one_along_a_corridor():
    grid = MazeGrid.from_env(make_env(ENV_ID))   # UMaze: a wall row between rows 1 and 3
    top_left, top_right, bottom_left = (grid.cell_to_xy(cell)
                                        for cell in ((1, 1), (1, 3), (3, 1)))
    assert grid.is_free(top_left) and not grid.is_free((top_left + bottom_left) / 2)
    assert not crosses_wall(grid, top_left, top_right)
    assert crosses_wall(grid, top_left, bottom_left)
    assert not grid.is_free(np.array([50.0, 0.0]))   # outside the maze


def test_plan_shape_reports_each_bundle_and_refuses_bad_input(tmp_path):
    path = write_bundle(tmp_path / 'm', maze_config())
    tool = str(REPO / 'tools' / 'benchmark' / 'plan_shape.py')

    def shape(*args):
        return subprocess.run([PYTHON, tool, *args], cwd=REPO, env=script_env(tmp_path),
                              capture_output=True, text=True, timeout=300)

    result = shape(str(path), '--episodes', '2')
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith(f'| {path} '))
    cells = [cell.strip() for cell in row.split('|')[1:-1]]
    assert cells[1] == '8'
    # Every plan starts at the ball and ends at its goal (both inpainted), whatever the
    # untrained network does in between.
    env = make_env(ENV_ID)
    starts = []
    for seed in (2000, 2001):
        state, goal = split_observation(env.reset(seed=seed)[0])
        starts.append(np.linalg.norm(state[:2] - goal))
    distances = [float(d) for d in cells[6].split(',')]
    assert abs(distances[0] - np.mean(starts)) < 0.006 and distances[-1] < 1e-4
    for bad, message in ((['--episodes', '0'], '--episodes 0 must be >= 1'),
                         (['--jump-m', 'nan'], '--jump-m nan must be > 0'),
                         (['models/hopper'], 'Hopper-v5 is not a goal maze'),
                         ([str(tmp_path / 'none')], 'not a bundle'),
                         (['--set', 'magic=1'], 'magic')):
        result = shape(str(path), *bad)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr


def test_maze_plan_cost_compares_each_method_per_plan_and_per_episode(tmp_path):
    # The suite's Trajectory Diffuser plans every 4 steps of a 300-step UMaze episode (75
    # plans); a maze protocol plans once per goal.
    (tmp_path / 'table.json').write_text(json.dumps([
        {'dataset': maze, 'name': name, 'plan_ms_p50': ms}
        for maze in ('umaze', 'medium', 'large')
        for name, ms in (('trajectory_diffuser', 10.0), ('decision_diffuser', 100.0))]))
    (tmp_path / 'diffuser_maze').mkdir()
    for seed, ms in enumerate((200.0, 400.0, 300.0)):
        (tmp_path / 'diffuser_maze' / f'umaze_seed{seed}.json').write_text(
            json.dumps({'plan_ms_p50': ms, 'plans_per_episode': 1.5}))
    umaze = table(tmp_path).splitlines()[2]
    assert umaze.startswith('| umaze | 10.0 ms; 0.8 s | 100 ms (10x); 7.5 s |')
    assert '| 300 ms (30x); 0.5 s |' in umaze           # median plan, mean plans an episode
    assert umaze.count('not run') == 5                   # no file, no row: not run
