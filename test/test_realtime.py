"""Planning on the robot's clock: paced returns, anytime refinement, the real-time benchmark."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bundle_planner import OBS, GOAL, tiny_config, tiny_hopper_planner, write_bundle

from diffusion_planner_ros.evaluation import evaluate
from diffusion_planner_ros.planning import load_planner
from diffusion_planner_ros.planning.receding import ReturnsToGo, target_steps


def test_paced_returns_fall_by_an_even_share_per_step_until_a_reward_arrives():
    returns = ReturnsToGo(1000.0, steps=100)
    assert returns.at(0) == 1000.0
    assert returns.at(10) == pytest.approx(900.0)
    assert returns.at(99) == pytest.approx(10.0)
    assert returns.at(500) == pytest.approx(10.0)   # past the episode: its last share
    returns.spend(3.0)                               # the robot reports rewards after all
    assert returns.at(10) == 997.0
    returns.reset()
    assert returns.at(50) == pytest.approx(500.0)
    assert ReturnsToGo(1000.0).at(50) == 1000.0      # no pace: the target less rewards
    assert ReturnsToGo(None, steps=100).at(3) is None
    with pytest.raises(ValueError, match='steps'):
        ReturnsToGo(1000.0, steps=-1)


def test_paced_evaluation_never_reads_the_rewards(tmp_path):
    planner = tiny_hopper_planner(tmp_path)
    assert target_steps(planner) == 1000        # Hopper-v5's time limit
    seen, plan = [], planner.plan

    def spy(state, goal=None, returns_to_go=None, budget_ms=None):
        seen.append(returns_to_go)
        return plan(state, goal=goal, returns_to_go=returns_to_go, budget_ms=budget_ms)

    planner.plan = spy
    evaluate('Hopper-v5', 1, 0, planner=planner, progress=False, max_episode_steps=6,
             returns='paced')
    assert seen == pytest.approx([300.0 * (1 - step / 1000) for step in range(len(seen))])
    planner.reconfigure(target_steps=50)
    assert target_steps(planner) == 50


@pytest.fixture
def anytime_planner(tmp_path):
    path = write_bundle(tmp_path / 'bundle', tiny_config())
    return load_planner(path, backend='eager')


def test_a_plan_without_a_budget_is_todays_plan(anytime_planner, tmp_path):
    reference = load_planner(write_bundle(tmp_path / 'again', tiny_config()),
                             backend='eager')
    anytime_planner.warm_up_anytime()      # costs measured, captures made: no plan changes
    for _ in range(3):
        plan = anytime_planner.plan(OBS, goal=GOAL, budget_ms=None)
        expected = reference.plan(OBS, goal=GOAL)
        assert np.array_equal(plan.refined_states, expected.refined_states)
        assert np.array_equal(plan.actions, expected.actions)
        assert plan.refine_steps == 3 and plan.refine_reason == 'configured'


def test_a_budget_below_one_refine_step_gives_the_priors_plan_and_says_so(anytime_planner):
    anytime_planner.warm_up_anytime()
    plan = anytime_planner.plan(OBS, goal=GOAL, budget_ms=0.0)
    assert plan.refine_steps == 0 and plan.refine_reason == 'budget'
    np.testing.assert_allclose(plan.refined_states, plan.prior_states, atol=1e-6)
    roomy = anytime_planner.plan(OBS, goal=GOAL, budget_ms=1e4)
    assert roomy.refine_steps == 3 and roomy.refine_reason == 'configured'
    assert not np.allclose(roomy.refined_states, roomy.prior_states, atol=1e-3)


def test_a_budget_between_takes_the_steps_that_fit(anytime_planner):
    anytime_planner.warm_up_anytime()
    costs = anytime_planner._refine_costs
    # Make the costs known exactly: 1 step 1 ms, 2 steps 2 ms, 3 steps 30 ms.
    for steps, cost in ((1, 1.0), (2, 2.0), (3, 30.0)):
        costs[steps].clear()
        costs[steps].append(cost)
    anytime_planner._inverse_costs.clear()
    plan = anytime_planner.plan(OBS, goal=GOAL, budget_ms=15.0)
    assert plan.refine_steps == 2 and plan.refine_reason == 'budget'


def test_the_floor_of_refine_steps_holds_under_any_budget(tmp_path):
    path = write_bundle(tmp_path / 'bundle', tiny_config(min_refine_steps=1))
    planner = load_planner(path, backend='eager')
    planner.warm_up_anytime()
    assert planner.plan(OBS, goal=GOAL, budget_ms=0.0).refine_steps == 1


@pytest.mark.parametrize('budget', [-1.0, math.nan, math.inf])
def test_a_bad_budget_is_refused(anytime_planner, budget):
    with pytest.raises(ValueError, match='budget_ms'):
        anytime_planner.plan(OBS, goal=GOAL, budget_ms=budget)


def test_the_real_time_benchmark_runs_end_to_end(ros_env, tmp_path):
    # Hopper: returns-conditioned, and the planner hears no reward and no episode_end, so the
    # paced target and the start of each episode come from the states alone.
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import run_planner_episode

    out = tmp_path / 'realtime.json'
    subprocess.run([sys.executable, 'training/benchmark_realtime.py', '--robot', 'hopper',
                    '--quick', '--json', str(out)],
                   env=ros_env, check=True, timeout=900, cwd=Path(__file__).parents[1])
    report = json.loads(out.read_text())
    lockstep, (realtime,) = report['lockstep'], report['realtime']['anytime']
    # In lockstep each episode is evaluate.py's with --returns paced, return for return.
    planner = load_planner(Path(__file__).parents[1] / 'models' / 'hopper', backend='eager')
    env = make_env('Hopper-v5', max_episode_steps=40)
    offline = [run_planner_episode(planner, env, seed, returns='paced').episode_return
               for seed in lockstep['seeds']]
    env.close()
    assert np.allclose(lockstep['episode_returns'], offline, rtol=1e-6), \
        (lockstep['episode_returns'], offline)
    # Lockstep applies each state's own command at the next step.
    assert lockstep['age_p50_periods'] == 1.0 and lockstep['age_max_periods'] == 1.0
    assert lockstep['steps_recorded'] >= 80
    # On the clock every applied command is matched with the plan it came from.
    assert realtime['steps_recorded'] >= 20 and realtime['age_p50_periods'] >= 1.0
    assert realtime['refine_steps_min'] >= 1       # the bundle's min_refine_steps
    assert lockstep['seeds'] == realtime['seeds']


def test_a_delay_of_zero_steps_is_lockstep_and_a_delay_changes_the_episode(tmp_path):
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import run_delayed_episode, run_planner_episode

    planner = tiny_hopper_planner(tmp_path)
    planner.reconfigure(replan_every=3)     # a chunk of 3 actions; still a plan every step
    env = make_env('Hopper-v5', max_episode_steps=20)
    delayed = run_delayed_episode(planner, env, 5, delay=0, returns='paced')
    planner.reconfigure(replan_every=1)
    lockstep = run_planner_episode(planner, env, 5, returns='paced')
    assert delayed.episode_return == lockstep.episode_return
    assert delayed.steps == lockstep.steps
    planner.reconfigure(replan_every=3)
    late = run_delayed_episode(planner, env, 5, delay=2, returns='paced')
    chunked = run_delayed_episode(planner, env, 5, delay=2, chunk=True, returns='paced')
    assert len({late.episode_return, chunked.episode_return, lockstep.episode_return}) == 3
    with pytest.raises(ValueError, match='delay'):
        run_delayed_episode(planner, env, 5, delay=-1)
    env.close()
