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
from diffusion_planner_ros.planning.returns import ReturnsToGo, target_steps
from diffusion_planner_ros.planning.threads import lower_thread_priority


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
    # Make the costs known exactly: 1 step 1 ms, 2 steps 2 ms, 3 steps 300 ms (far apart, so
    # a loaded machine's prior, which the budget also pays for, changes nothing).
    for steps, cost in ((1, 1.0), (2, 2.0), (3, 300.0)):
        costs[steps].clear()
        costs[steps].append(cost)
    anytime_planner._inverse_costs.clear()
    plan = anytime_planner.plan(OBS, goal=GOAL, budget_ms=150.0)
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


@pytest.mark.serial
def test_the_real_time_benchmark_runs_end_to_end(ros_env, tmp_path):
    # Hopper: returns-conditioned, and the planner hears no reward and no episode_end, so the
    # paced target and the start of each episode come from the states alone. The bridge spins
    # on the events executor in every run; the planner on the config's (events), and on
    # SingleThreadedExecutor in the variant.
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import run_planner_episode

    out = tmp_path / 'realtime.json'
    bundle = Path(__file__).parents[1] / 'models' / 'hopper'
    # The recorder at normal priority: at SCHED_IDLE (the default, for timing runs) a loaded
    # machine starves it and it loses messages (seen: 9 of 40 lockstep steps recorded).
    subprocess.run([sys.executable, 'tools/benchmark/benchmark_realtime.py', '--robot', 'hopper',
                    '--quick', '--recorder', 'normal', '--params', f'bundle:={bundle}',
                    '--bridge-params', 'executor:=events', '--variant', 'single=executor:=single',
                    '--json', str(out)],
                   env=ros_env, check=True, timeout=900, cwd=Path(__file__).parents[1])
    report = json.loads(out.read_text())
    assert report['params'] == {'bundle': str(bundle)}    # given to every run
    lockstep, (realtime,) = report['lockstep'], report['realtime']['anytime']
    (single,) = report['realtime']['single']
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
    # Each episode's steps, the reset state (no step produced it) not one of them.
    assert lockstep['steps_recorded'] == 80
    # On the clock every applied command is matched with the plan it came from.
    assert realtime['steps_recorded'] >= 20 and realtime['age_p50_periods'] >= 1.0
    assert realtime['refine_steps_min'] >= 1       # the bundle's min_refine_steps
    assert lockstep['seeds'] == realtime['seeds'] == single['seeds']
    assert single['steps_recorded'] >= 20 and single['age_p50_periods'] >= 1.0
    assert realtime['planner_diagnostics']['executor'] == 'events'
    assert realtime['planner_diagnostics']['executor_delay_p50_ms'] == 'n/a'
    assert single['planner_diagnostics']['executor'] == 'single'
    assert float(single['planner_diagnostics']['executor_delay_p50_ms']) >= 0.0
    # Each node's CPU over the episodes: the planner plans, the bridge steps MuJoCo.
    for run in (lockstep, realtime, single):
        assert set(run['cpu_cores']) == {'planner_node', 'sim_bridge_node'}
        assert all(0.0 < cores < 2.5 for cores in run['cpu_cores'].values()), run['cpu_cores']


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
    chunked = run_delayed_episode(planner, env, 5, delay=2, late='chunk', returns='paced')
    tracked = run_delayed_episode(planner, env, 5, delay=2, late='track', returns='paced')
    assert len({late.episode_return, chunked.episode_return, tracked.episode_return,
                lockstep.episode_return}) == 4
    with pytest.raises(ValueError, match='delay'):
        run_delayed_episode(planner, env, 5, delay=-1)
    env.close()


def test_a_bundles_transition_model_round_trips_and_predicts_through_the_actions(tmp_path):
    import torch

    planner = tiny_hopper_planner(tmp_path / 'with', transition_model=True)
    assert planner.can_predict
    state = np.linspace(-1.0, 1.0, 11)
    actions = np.array([[0.5, -0.2, 0.1], [0.0, 0.3, -0.4]])
    assert np.array_equal(planner.predict_state(state, np.zeros((0, 3))), state)
    # Two steps of the ensemble's mean, in the bundle's normalised units.
    states, moves = planner.bundle.normalizers['states'], planner.bundle.normalizers['actions']
    model = planner.bundle.models['transition']
    current = torch.tensor(states.normalize(state), dtype=torch.float32)[None]
    with torch.no_grad():
        for action in actions:
            current = model.predict(
                current, torch.tensor(moves.normalize(action), dtype=torch.float32)[None])
    expected = states.unnormalize(current[0].numpy().astype(np.float64))
    predicted = planner.predict_state(state, actions)
    np.testing.assert_allclose(predicted, expected, atol=1e-6)
    assert not np.allclose(predicted, state)
    # The weights survive the bundle: a fresh load predicts the same.
    again = load_planner(tmp_path / 'with')
    np.testing.assert_allclose(again.predict_state(state, actions), predicted, atol=1e-7)
    with pytest.raises(ValueError, match='NaN'):
        planner.predict_state(state, [[np.nan, 0.0, 0.0]])
    plain = tiny_hopper_planner(tmp_path / 'without')
    assert not plain.can_predict and 'transition' not in plain.bundle.models
    with pytest.raises(ValueError, match='transition model'):
        plain.predict_state(state, actions)


def test_a_latency_aware_plan_starts_from_the_state_predicted_through_the_commands_in_flight(
        tmp_path):
    from diffusion_planner_ros.envs import make_env
    from diffusion_planner_ros.evaluation import run_delayed_episode

    planner = tiny_hopper_planner(tmp_path, transition_model=True)
    planner.reconfigure(replan_every=3)
    env = make_env('Hopper-v5', max_episode_steps=12)
    # Lead 0 is the plan from the state as it came, exactly.
    plain = run_delayed_episode(planner, env, 5, delay=2, returns='paced')
    zero = run_delayed_episode(planner, env, 5, delay=2, returns='paced', lead=0)
    assert zero.episode_return == plain.episode_return
    starts, targets, plan = [], [], planner.plan

    def spy(state, goal=None, returns_to_go=None, budget_ms=None):
        starts.append(np.array(state))
        targets.append(returns_to_go)
        result = plan(state, goal=goal, returns_to_go=returns_to_go, budget_ms=budget_ms)
        commands.append(result.actions[0])
        return result

    commands: list = []
    in_flight, predict = [], planner.predict_state

    def predict_spy(state, actions):
        in_flight.append(np.array(actions))
        return predict(state, actions)

    planner.plan, planner.predict_state = spy, predict_spy
    observation, _ = env.reset(seed=5)
    aware = run_delayed_episode(planner, env, 5, delay=2, returns='paced', lead=2)
    assert aware.episode_return != plain.episode_return
    # The first plan's commands in flight are none (zero); the third plan's are the first
    # two plans' first actions, applied at steps 2 and 3 before its own at step 4.
    np.testing.assert_allclose(starts[0], predict(observation, np.zeros((2, 3))), atol=1e-9)
    assert np.array_equal(in_flight[0], np.zeros((2, 3)))
    assert np.array_equal(in_flight[2], np.stack(commands[:2]))
    assert targets[0] == pytest.approx(300.0 * (1 - 2 / 1000))
    assert targets[2] == pytest.approx(300.0 * (1 - 4 / 1000))
    env.close()
    with pytest.raises(ValueError, match='lead'):
        run_delayed_episode(planner, env, 5, delay=2, lead=-1)


def test_the_commands_in_flight_stay_the_first_actions_of_the_next_chunk():
    from diffusion_planner_ros.planning.realtime import ActionChunk

    period = 0.01
    chunk = ActionChunk(2)
    assert np.array_equal(chunk.ahead(0.0, 2, period), np.zeros((2, 2)))   # no chunk yet
    old = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    chunk.replace(old, start_s=1.0)
    # A plan starts from a state received at 1.02 (step 2 of the old chunk) with a lead of 2.
    in_flight = chunk.ahead(1.02, 2, period)
    assert np.array_equal(in_flight, old[2:4])
    new = np.array([[9.0, 9.0], [8.0, 8.0]])
    chunk.replace(np.concatenate([in_flight, new]), start_s=1.02, installed_s=1.025)
    applied = [chunk.at(1.02 + (i + 0.5) * period, period) for i in range(4)]
    assert np.array_equal(applied, [old[2], old[3], new[0], new[1]])
    # Steps past the old chunk's hold are zero in flight, not its last action.
    assert np.array_equal(chunk.ahead(2.0, 1, period), np.zeros((1, 2)))


def test_the_plan_lead_follows_the_measured_state_to_command_time():
    from diffusion_planner_ros.planning.realtime import PlanLead

    lead = PlanLead(-1, max_steps=6)
    assert lead.for_period(0.008) == 0               # nothing measured yet
    for _ in range(20):
        lead.add(5.0)
    assert lead.for_period(0.008) == 0               # within a period: the next step
    for _ in range(20):
        lead.add(18.0)
    assert lead.for_period(0.008) == 2               # 90th percentile 18 ms: two steps late
    for _ in range(60):
        lead.add(500.0)
    assert lead.for_period(0.008) == 6               # never past the horizon
    assert PlanLead(3, max_steps=6).for_period(0.008) == 3
    assert PlanLead(0, max_steps=6).for_period(0.008) == 0
    for bad in (-2, 7):
        with pytest.raises(ValueError, match='lead'):
            PlanLead(bad, max_steps=6)


def test_a_tracked_plan_gives_each_step_its_target_and_keeps_the_targets_in_flight():
    from diffusion_planner_ros.planning.realtime import PlanTrack

    period = 0.01
    track = PlanTrack(2)
    assert track.empty and track.target(0.0, period) == (None, None)
    targets, sources = track.ahead(0.0, 2, period)
    assert np.isnan(targets).all() and sources == [None, None]      # nothing planned yet
    old = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    track.replace(old, start_s=1.0, sources=['old'] * 4)
    # A plan from a state received at 1.02 (step 2 of the old plan) with a lead of 2 keeps the
    # old plan's targets (and sources) for the two steps in flight, then follows its own.
    in_flight, in_flight_sources = track.ahead(1.02, 2, period)
    assert np.array_equal(in_flight, old[2:4]) and in_flight_sources == ['old', 'old']
    new = np.array([[9.0, 9.0], [8.0, 8.0]])
    track.replace(np.concatenate([in_flight, new]), start_s=1.02,
                  sources=in_flight_sources + ['new'] * 2)
    followed = [track.target(1.02 + (i + 0.5) * period, period) for i in range(5)]
    assert [source for _, source in followed] == ['old', 'old', 'new', 'new', None]
    assert np.array_equal([t for t, _ in followed[:4]], [old[2], old[3], new[0], new[1]])
    assert followed[4][0] is None                  # past the last target: zero
    with pytest.raises(ValueError, match='sources'):
        track.replace(new, start_s=0.0, sources=['one'])
    # A plan that ends at its goal at rest holds its last target past its end.
    holding = PlanTrack(2, hold_end=True)
    assert holding.target(0.0, period) == (None, None)               # still nothing planned
    holding.replace(new, start_s=1.0, sources=['new'] * 2)
    late, source = holding.target(1.0 + 7.5 * period, period)
    assert np.array_equal(late, new[-1]) and source == 'new'
    assert holding.target(0.5, period) == (None, None)                # before the plan: zero
    track.clear()
    assert track.empty


def test_tracking_sends_the_inverse_dynamics_from_the_measured_state(tmp_path):
    planner = tiny_hopper_planner(tmp_path, transition_model=True)
    plan = planner.plan(np.zeros(11), returns_to_go=300.0)
    # From the plan's own first state, tracking its second is the plan's first action.
    np.testing.assert_allclose(planner.track(plan.refined_states[0], plan.refined_states[1]),
                               plan.actions[0], atol=1e-5)
    elsewhere = planner.track(np.full(11, 0.5), plan.refined_states[1])
    assert not np.allclose(elsewhere, plan.actions[0])
    # Predicting through tracking: each command from the state predicted for its step.
    targets = plan.refined_states[1:3]
    end, commands = planner.predict_tracked(plan.refined_states[0], targets)
    first = planner.track(plan.refined_states[0], targets[0])
    middle = planner.predict_state(plan.refined_states[0], first[None])
    np.testing.assert_allclose(commands, [first, planner.track(middle, targets[1])], atol=1e-5)
    np.testing.assert_allclose(end, planner.predict_state(middle, commands[1:]), atol=1e-5)
    # A step no plan covered (NaN target) commands zero.
    _, none = planner.predict_tracked(plan.refined_states[0], np.full((1, 11), np.nan))
    assert np.array_equal(none, np.zeros((1, 3)))


@pytest.mark.slow
def test_check_transition_reports_prediction_errors_and_refuses_a_bundle_without_a_model(
        tmp_path):
    from conftest import script_env

    env = script_env(tmp_path)
    tiny_hopper_planner(tmp_path / 'with', transition_model=True)
    tiny_hopper_planner(tmp_path / 'without')
    root = Path(__file__).parents[1]
    out = tmp_path / 'check.json'
    subprocess.run([sys.executable, 'training/check_transition.py', '--bundle',
                    str(tmp_path / 'with'), '--steps', '16', '--ahead', '1', '2', '--json',
                    str(out)], env=env, check=True, timeout=300, cwd=root)
    report = json.loads(out.read_text())
    assert [row['steps_ahead'] for row in report['rows']] == [1, 2]
    assert all(math.isfinite(row['error_with_model']) and row['error_without'] > 0
               for row in report['rows'])
    refused = subprocess.run([sys.executable, 'training/check_transition.py', '--bundle',
                              str(tmp_path / 'without')], env=env, timeout=300,
                             cwd=root, capture_output=True, text=True)
    assert refused.returncode == 2 and 'no transition model' in refused.stderr


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread nice is Linux')
def test_the_planning_thread_lowers_only_its_own_priority():
    import os
    import threading

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def planning():
        thread = threading.get_native_id()
        seen['returned'] = lower_thread_priority(5)
        seen['value'] = os.getpriority(os.PRIO_PROCESS, thread)

    worker = threading.Thread(target=planning)
    worker.start()
    worker.join(timeout=10)
    assert seen['returned'] == seen['value'] == min(19, caller + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller
    with pytest.raises(ValueError, match='nice must be >= 0'):
        lower_thread_priority(-1)


def test_a_state_starts_a_plan_each_plan_period_and_at_once_when_no_plan_is_in_force():
    from diffusion_planner_ros.planning.realtime import PlanTrigger

    trigger, control, plan = PlanTrigger(), 0.01, 0.04
    states = [0.01 * i for i in range(12)]
    due = [t for t in states if trigger.due(t, plan, control)]
    # The first state, then every fourth (a plan period less half a control period).
    assert np.allclose(due, [0.0, 0.04, 0.08])
    trigger.plan_now()          # a new goal: the plan in force is dropped
    assert trigger.due(0.12, plan, control)         # the next state, not a period later
    assert not trigger.due(0.13, plan, control)
    assert trigger.due(0.155, plan, control)


def test_a_plans_budget_counts_from_its_states_arrival():
    from diffusion_planner_ros.planning.realtime import budget_left_ms

    assert budget_left_ms(None, 0.002) is None                       # no budget: always k
    assert budget_left_ms(12.0, 0.002) == pytest.approx(10.0)        # less what it waited
    assert budget_left_ms(12.0, 0.020) == 0.0                        # never below zero


def test_a_command_goes_out_when_it_changes_and_again_only_after_the_repeat_period():
    from diffusion_planner_ros.planning.realtime import CommandRepeat

    repeat = CommandRepeat(0.1)
    assert not repeat.due(None, 0.0)                 # no command in force: nothing to send
    assert repeat.due(np.zeros(2), 0.0)              # nothing sent yet
    repeat.sent(np.zeros(2), 0.0)
    assert not repeat.due(np.zeros(2), 0.05)         # the same, too soon
    assert repeat.due(np.array([0.0, 0.1]), 0.05)    # changed
    assert repeat.due(np.zeros(2), 0.1)              # the same, but a driver's timeout nears
