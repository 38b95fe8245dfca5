"""The planner node's plan and command logic, driven without ROS (planning/commanding.py)."""

import threading
import time

import numpy as np
import pytest
from test_bundle_planner import tiny_hopper_planner

from diffusion_planner_ros.planning import load_planner
from diffusion_planner_ros.planning.commanding import CommandLoop
from diffusion_planner_ros.planning.realtime import PlanLead
from diffusion_planner_ros.planning.returns import ReturnsToGo

CONTROL_HZ, PLAN_HZ = 125.0, 62.5
T = 1.0 / CONTROL_HZ


class Node:
    """What the node gives the loop: a command publisher (a list here) and its log."""

    def __init__(self):
        self.commands, self.warnings, self.plans = [], [], []
        self.loop = None

    def send(self, action, source):
        self.loop.sent(action, source)
        self.commands.append((np.array(action), source))

    def warn(self, key, text):
        self.warnings.append(key)


@pytest.fixture
def running(tmp_path):
    """Start a loop on a tiny Hopper planner; yield a maker; stop its worker at the end."""
    threads = []

    def make(lockstep, state_timeout_s=0.5):
        planner = tiny_hopper_planner(tmp_path / 'bundle')
        node = Node()
        node.loop = loop = CommandLoop(
            planner, planner, lockstep=lockstep, tracking=not lockstep,
            lead=PlanLead(0, planner.horizon - 2), returns_to_go=ReturnsToGo(300.0),
            plan_budget=None, added_latency_s=0.0, state_timeout_s=state_timeout_s,
            control_rate_hz=CONTROL_HZ, plan_rate_hz=PLAN_HZ, plan_thread_nice=0,
            send=node.send, warn=node.warn, log=node.warnings.append,
            on_plan=lambda plan, goal: node.plans.append(plan))
        loop.set_rates(CONTROL_HZ, PLAN_HZ, commanding=not lockstep)
        loop.active = True
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        threads.append((loop, thread))
        reference = load_planner(tmp_path / 'bundle', backend='eager')
        return loop, node, reference

    yield make
    for loop, thread in threads:
        loop.stop()
        thread.join(timeout=10.0)


def wait_for(condition, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, 'condition not met in time'
        time.sleep(0.002)


def states(n, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 11))


def test_lockstep_gives_each_state_one_command_a_plan_every_replan_every_states(running):
    loop, node, reference = running(lockstep=True)
    loop.planner.reconfigure(replan_every=2)
    reference.reconfigure(replan_every=2)
    observations = states(4)
    for step, observation in enumerate(observations):
        if step:
            loop.spend_reward(1.0)    # the step's reward, before the state it led to
        loop.on_state(observation, 0.01 * (step + 1), time.monotonic())
        wait_for(lambda: len(node.commands) == step + 1)
    # Steps 0 and 2 plan (their plan's first action); 1 and 3 take their chunk's next action.
    first = reference.plan(observations[0], returns_to_go=300.0)
    third = reference.plan(observations[2], returns_to_go=298.0)
    expected = [first.actions[0], first.actions[1], third.actions[0], third.actions[1]]
    np.testing.assert_allclose([action for action, _ in node.commands], expected, atol=1e-6)
    sources = [source for _, source in node.commands]
    assert sources[0] == sources[1] and sources[2] == sources[3] and sources[0] != sources[2]
    assert sources[0][0] == pytest.approx(0.01) and sources[2][0] == pytest.approx(0.03)
    assert len(node.plans) == 2


def test_a_slow_plan_answered_at_once_is_not_taken_for_a_new_episode(running):
    # A lockstep robot answers a command with its next state at once; a plan slower than the
    # pause that marks a new episode (a cold or loaded computer) must not make that answer one.
    loop, node, reference = running(lockstep=True)
    loop.added_latency_s = 0.3
    observations = states(2, seed=2)
    robot_send = node.send

    def answering_robot(action, source):
        robot_send(action, source)
        if len(node.commands) == 1:
            loop.spend_reward(1.0)
            loop.on_state(observations[1], 0.02, time.monotonic())

    loop.send = answering_robot
    loop.on_state(observations[0], 0.01, time.monotonic())
    wait_for(lambda: len(node.commands) == 2)
    first = reference.plan(observations[0], returns_to_go=300.0)
    second = reference.plan(observations[1], returns_to_go=299.0)   # the same episode's history
    np.testing.assert_allclose([action for action, _ in node.commands],
                               [first.actions[0], second.actions[0]], atol=1e-6)


def test_an_ended_episodes_last_state_taken_after_its_end_stays_out_of_the_next(running):
    # The episode_end and the episode's last state travel on different topics: on a robot
    # that sends no rewards, the planner may take the end first. The new episode's first plan
    # must be a fresh one (no history from the last episode, the sampler reseeded).
    loop, node, reference = running(lockstep=True)
    ended, started = states(3, seed=3), states(1, seed=4)[0]

    class ResetAnswered:
        """The loop's planner; the new episode's first state arrives as it is reset."""

        nice = None

        def __init__(self, planner):
            self.planner, self.resets, self.plans = planner, 0, 0

        def plan(self, *args, **kwargs):
            self.plans += 1
            return self.planner.plan(*args, **kwargs)

        def reset(self):
            self.planner.reset()
            self.resets += 1
            if self.resets == 1:
                loop.on_state(started, 0.03, time.monotonic())

    loop.plans = ResetAnswered(loop.planner)
    # In lockstep the control rate only sets the pause that marks a new episode on a robot
    # without episode_end: 20 s here, so a slow test thread cannot start one.
    loop.control_rate_hz = 0.5
    robot_send = node.send

    def robot(action, source):
        robot_send(action, source)
        if len(node.commands) == 2:    # the last step: its state, then the end
            loop.on_state(ended[2], 0.03, time.monotonic())
            loop.end_episode()

    loop.send = robot
    loop.on_state(ended[0], 0.01, time.monotonic())
    wait_for(lambda: len(node.commands) == 1)
    loop.on_state(ended[1], 0.02, time.monotonic())   # no reward: planned after 2 s
    wait_for(lambda: len(node.commands) == 3)
    first = reference.plan(started, returns_to_go=300.0)
    np.testing.assert_allclose(node.commands[2][0], first.actions[0], atol=1e-6)
    # Three plans: each episode's states, not the ended episode's last one.
    assert loop.plans.resets == 1 and loop.plans.plans == 3 and len(node.plans) == 3


def test_real_time_tracks_the_plan_from_each_state_as_it_arrives(running):
    loop, node, reference = running(lockstep=False, state_timeout_s=0.05)
    first, second = states(2, seed=1)
    start = time.monotonic()
    loop.on_state(first, 1.0, start)             # no plan in force: this state starts one
    wait_for(lambda: node.commands)
    plan = reference.plan(first, returns_to_go=300.0)
    # The plan's first command: inverse dynamics from the state to the plan's next state.
    action, source = node.commands[0]
    np.testing.assert_allclose(action, reference.track(first, plan.refined_states[1]),
                               atol=1e-5)
    assert source[:2] == (1.0, 1.0)     # computed from the state the plan was made for
    # The next state, one period later, gets its command at once, before any new plan
    # (a plan period has not passed): from where the robot is to the plan's state after it.
    loop.on_state(second, 1.0 + T, start + T)
    action, source = node.commands[1]
    np.testing.assert_allclose(action, reference.track(second, plan.refined_states[2]),
                               atol=1e-5)
    assert source[:2] == (1.0 + T, 1.0)  # this state's command, the first state's plan
    assert len(node.plans) == 1
    # No fresh state within the state timeout: the control tick commands zero, no plan's.
    wait_for(lambda: time.monotonic() > start + T + 0.05)
    loop.tick()
    action, source = node.commands[-1]
    assert not action.any() and source is None and loop.track.empty
    assert 'timeout' in node.warnings


def test_states_with_stamps_that_go_backwards_are_dropped_and_counted(running):
    loop, node, _ = running(lockstep=False)
    now = time.monotonic()
    loop.on_state(states(1)[0], 2.0, now)
    loop.on_state(states(1)[0], 1.0, now + T)
    assert loop.rejected_states == 1 and node.warnings[0].startswith('joint_states:stamp')


def test_a_state_of_unknown_arrival_counts_as_arrived_now_and_leaves_the_delay_unmeasured(
        running):
    # The events executor gives no MessageInfo: the state is taken as it comes, with no
    # executor delay made up for it; a known arrival is measured.
    loop, node, _ = running(lockstep=False)
    loop.on_state(states(1)[0], 1.0, None)
    assert loop.executor_delay.percentile(50) is None
    assert loop.state_age_s() < 1.0
    loop.on_state(states(1)[0], 2.0, time.monotonic() - 0.2)
    assert loop.executor_delay.percentile(50) >= 200.0
