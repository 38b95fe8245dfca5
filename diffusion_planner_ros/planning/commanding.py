"""The planner in a control loop, without ROS: states in, plans on a worker, commands out.

``CommandLoop`` is what the planner node does between its topics. The node hands it each state,
goal, reward and episode end, calls ``tick`` on its control timer and runs ``run`` on a worker
thread; the loop sends commands through the node's ``send`` and shows each plan through
``on_plan``. Tests drive it with plain calls.

In lockstep each state gets one command: its plan's first action, or the next action of the
plan's chunk between plans (planner.replan_every). In real time:
- A state starts a plan once a plan period has passed, and at once when no plan is in force
  (none yet, a new goal or episode, a failed plan); the plan has a budget (by default 3/4 of a
  plan period) and runs as many of its k refinement steps as fit after the prior's rollout.
- The plan is tracked (with a bundle that has inverse dynamics): each state's arrival sends the
  command for the robot's next step, inverse dynamics from that state to the plan's state for
  the step's end. Past the plan's last state the command is zero, except that a plan ending at
  its goal at rest (Diffuser's maze protocol) holds its last state. Without tracking the plan's
  own actions go out by time; a chunk's last action holds one plan period past its end (or its
  arrival), then zero.
- A latency-aware plan (a plan lead, with a bundle that carries a transition model) starts from
  the state predicted for the step its first command will be applied in, through the commands
  in flight, which stay the plan's first targets (or actions).
- The same command is repeated every ``repeat_after_s`` at least; a state older than the state
  timeout commands zero.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Callable

import numpy as np

from diffusion_planner_ros.planning.realtime import (ActionChunk, budget_left_ms,
                                                     CommandRepeat, LatencyStats, PlanLead,
                                                     PlanTrack, PlanTrigger, StampGate)
from diffusion_planner_ros.planning.returns import ReturnsToGo
from diffusion_planner_ros.planning.threads import lower_thread_priority

# A plan's budget where none is given: this share of a plan period, leaving the rest for the
# command's way out.
AUTO_BUDGET_SHARE = 0.75
# Lockstep: a state sent again within this long of the command for it crossed that command
# (or came while it was planned) and gets none; later, the command is taken as lost.
LOCKSTEP_RESEND_GRACE_S = 0.5
# The control timer sends the action in force when it changes, and the same action again only
# after this long (a driver's command timeout must not expire): a repeat costs every listener
# a callback and changes nothing under zero-order hold.
REPEAT_AFTER_S = 0.1
# States that resume after this long without one (and at least this many control periods),
# counted from the later of the last state and this planner's last command, start a new
# episode where the robot sends no episode_end: a robot that paused has been reset.
NEW_EPISODE_GAP_S = 0.2
NEW_EPISODE_GAP_PERIODS = 10
# The control timer's period while a plan is tracked (at least the control period, at most
# half the state timeout): commands then go out as states arrive.
TRACKING_TICK_S = 0.02


def plan_budget_ms(budget_ms: float, plan_rate_hz: float, lockstep: bool) -> float | None:
    """Return a plan's budget in ms for the parameter's value (None: none, always k).

    -1 is AUTO_BUDGET_SHARE of a plan period, 0 none; lockstep has none.
    """
    if lockstep or budget_ms == 0:
        return None
    return AUTO_BUDGET_SHARE * 1e3 / plan_rate_hz if budget_ms < 0 else budget_ms


class CommandLoop:
    """The planner node's plan and command logic (no ROS).

    planner: this process's planner (it tracks and predicts); plans: what plans (the same
    planner, or a PlanProcess). send(action, source) publishes a command if the node is active
    and then calls ``sent`` (under its own lock, so no command can follow a deactivation's
    zero); source (None: no plan's command) is what ``~/command_info`` reports. warn(key,
    text) is a throttled warning, log(text) a warning line, on_plan(plan, goal) shows a plan.
    The runtime settings (``plan_budget``, ``added_latency_s``, ``lead``) may be changed
    between calls; the state timeout through ``set_state_timeout``, rates through
    ``set_rates``.
    """

    def __init__(self, planner, plans, *, lockstep: bool, tracking: bool, lead: PlanLead,
                 returns_to_go: ReturnsToGo, plan_budget: float | None, added_latency_s: float,
                 state_timeout_s: float, control_rate_hz: float, plan_rate_hz: float,
                 plan_thread_nice: int, send: Callable, warn: Callable, log: Callable,
                 on_plan: Callable):
        self.planner, self.plans = planner, plans
        self.lockstep, self.tracking, self.lead = lockstep, tracking, lead
        self.returns_to_go = returns_to_go
        self.plan_budget, self.added_latency_s = plan_budget, added_latency_s
        self.state_timeout_s = state_timeout_s
        self.send, self.warn, self.log, self.on_plan = send, warn, log, on_plan
        self.plan_thread_nice = plan_thread_nice
        self.active = False
        self.chunk = ActionChunk(planner.action_dim)
        self.track = PlanTrack(planner.obs_dim, hold_end=planner.holds_plan_end)
        # What ~/command_info says of the last plan: the stamp of the state it was made for,
        # the refinement steps it ran and its plan time.
        self._chunk_source = (0.0, -1.0, 0.0)  # (stamp s, steps, plan ms)
        self.repeat = CommandRepeat(REPEAT_AFTER_S)  # the last command (unclipped), when sent
        self._last_source = None
        self._last_plan_command = -math.inf  # when the last plan's command was about to go out
        self.refine_steps_used = LatencyStats()
        self.lead_steps_used = LatencyStats()
        self.plan_latency, self.command_latency = LatencyStats(), LatencyStats()
        self.overhead = LatencyStats()  # state-to-command minus plan time, per plan
        self.plan_wait = LatencyStats()  # state arrival to plan start, per plan
        self.executor_delay = LatencyStats()  # state arrival to its callback, per state
        self.stamps = StampGate(stale_after_s=state_timeout_s)
        self.deadline_misses = 0
        self.rejected_states = 0
        self.refine_reason = 'none yet'
        # The planning thread's nice value once it has set it (a planning process has its own).
        self.plan_nice = None if plans is planner else plans.nice
        self._lock = threading.Lock()
        # (observation, receive time, sequence number, (episode number, step in the episode),
        # resent, stamp)
        self._state = None
        self._state_sequence = 0
        # Steps into the episode (distinct stamps since the last episode_end, the reset state
        # being step 0), so a lockstep plan can wait for the reward of the step before it.
        self._episode_step, self._last_stamp, self._episode = -1, None, 0
        self._rewards_absent = False
        self._goal = None
        self._goal_version = 0
        self._history_stale = False
        self._wake = threading.Event()
        # Real time: a state starts a plan once a plan period has passed, or at once when no
        # plan is in force.
        self.trigger = PlanTrigger()
        self._running = True
        self.control_rate_hz = control_rate_hz
        self.control_period_s = 0.0   # 0 until commanding starts in real time (set_rates)
        self.plan_period_s = 1.0 / plan_rate_hz
        self.deadline_ms = 1e3 / plan_rate_hz   # a plan longer than a plan period missed it
        self.tick_period_s = 0.0

    # Settings ---------------------------------------------------------------------------------
    def set_rates(self, control_rate_hz: float, plan_rate_hz: float,
                  commanding: bool) -> float:
        """Take new rates; return the control timer's period (commanding: real time, active).

        A tracked plan's commands go out as states arrive; the timer only watches for a stale
        state, a used-up plan and a due repeat, so it need not wake every period.
        """
        self.control_rate_hz = control_rate_hz
        self.deadline_ms = 1e3 / plan_rate_hz
        if commanding:
            self.control_period_s = 1.0 / control_rate_hz
            self.plan_period_s = 1.0 / plan_rate_hz
            self.tick_period_s = self.control_period_s
            if self.tracking:
                self.tick_period_s = min(max(self.control_period_s, TRACKING_TICK_S),
                                         0.5 * self.state_timeout_s)
        return self.tick_period_s

    def set_state_timeout(self, state_timeout_s: float) -> None:
        """Take a new state timeout (the stamp gate re-anchors after as long)."""
        self.state_timeout_s = state_timeout_s
        self.stamps.stale_after_s = state_timeout_s

    def stop(self) -> None:
        """Make ``run`` return."""
        self._running = False
        self._wake.set()

    def state_age_s(self) -> float:
        """Return how long ago the latest state arrived (inf: none yet)."""
        with self._lock:
            state = self._state
        return time.monotonic() - state[1] if state else math.inf

    # Input ------------------------------------------------------------------------------------
    def forget_plan(self) -> None:
        """Drop the plan in force: its actions and the states it is followed to.

        The next state starts a plan at once.
        """
        self.chunk.clear()
        self.track.clear()
        self.trigger.plan_now()

    def on_state(self, observation: np.ndarray, stamp: float, received: float | None) -> None:
        """Take a state stamped ``stamp`` (s) that arrived at ``received`` (monotonic s).

        ``received`` None: the arrival time is unknown (an executor that gives no MessageInfo);
        the state counts as arrived now and the executor's delay goes unmeasured.
        """
        if received is None:
            received = time.monotonic()
        else:
            self.executor_delay.add(1e3 * (time.monotonic() - received))
        problem = self.stamps.check(stamp, received)
        if problem is not None:
            self.reject(problem)
            return
        with self._lock:
            # A state that repeats the last one, stamp and values, is the same step sent again
            # (a lockstep bridge's watchdog): it keeps its step number.
            resent = (stamp != 0.0 and stamp == self._last_stamp and self._state is not None
                      and np.array_equal(observation, self._state[0]))
            if (self._state is not None and not resent
                    and received - max(self._state[1], self._last_plan_command)
                    > max(NEW_EPISODE_GAP_S, NEW_EPISODE_GAP_PERIODS / self.control_rate_hz)):
                # States resume after a pause (not one this planner made by planning slowly):
                # a robot that sends no episode_end has started anew. (With arrival times
                # unknown, a stall of the node's executor this long looks the same.)
                self._start_episode()
            self._state_sequence += 1
            if not resent:
                self._episode_step, self._last_stamp = self._episode_step + 1, stamp
            self._state = (observation, received, self._state_sequence,
                           (self._episode, self._episode_step), resent, stamp)
        if self.lockstep or self.trigger.due(received, self.plan_period_s,
                                             self.control_period_s):
            self._wake.set()
        if self.lockstep or not self.control_period_s:
            return
        # The robot applies the latest command at its next step: send the command for that
        # step now, from this state where the plan is tracked, rather than at the timer's phase.
        if self.tracking:
            self._send_tracked(observation, stamp, received)
        else:
            self._send_in_force(received + 0.5 * self.control_period_s)

    def reject(self, problem: str) -> None:
        """Count a dropped state and warn, throttled per kind of problem."""
        self.rejected_states += 1
        # The kind: the text before any listed values, numbers left out.
        kind = re.sub(r'-?\d+(\.\d+)?', '#', problem.split(':')[0])
        self.warn(f'joint_states:{kind}', f'dropped joint_states: {problem}')

    def set_goal(self, goal: np.ndarray) -> bool:
        """Take a goal; False where it is the goal in force, sent again (its plan goes on)."""
        with self._lock:
            if self._goal is not None and np.array_equal(goal, self._goal):
                return False
            self._goal = goal
            self._goal_version += 1
        # Stop sending the old goal's actions now; the worker resets the planner before its next
        # plan, so a reset never lands in the middle of one.
        self.forget_plan()
        return True

    def spend_reward(self, reward: float) -> None:
        """Take one step's reward off the returns-to-go target."""
        self.returns_to_go.spend(reward)

    def end_episode(self) -> None:
        """Start a new episode with the next state."""
        with self._lock:
            self._start_episode()

    def _start_episode(self) -> None:
        """Make the next state start a new episode: no actions, no history, the full target.

        Called with self._lock held.
        """
        self.forget_plan()
        self._history_stale = True
        self._episode_step, self._last_stamp = -1, None
        self._episode += 1
        self.returns_to_go.reset()

    # Planning (worker thread) -----------------------------------------------------------------
    def run(self) -> None:
        """Plan whenever a state asks for it, until ``stop``."""
        if self.plans is self.planner:
            self.plan_nice = lower_thread_priority(self.plan_thread_nice)
        consumed_sequence, steps_since_plan, goal_version = 0, None, 0
        # Lockstep: the (episode, step) last commanded and when, so a resent state gets no
        # second command (the bridge would step twice) unless that command looks lost.
        commanded, commanded_at = None, -math.inf
        while self._running:
            if not self._wake.wait(timeout=0.1):
                continue
            self._wake.clear()
            # One look at the state, the goal and the episode: an episode_end may arrive
            # before the ended episode's last state has been planned on (they travel on
            # different topics), and that state must not enter the new episode's history.
            with self._lock:
                state, goal, version = self._state, self._goal, self._goal_version
                history_stale, self._history_stale = self._history_stale, False
                ended = state is not None and state[3][0] != self._episode
            if version != goal_version or history_stale:
                goal_version = version
                self.plans.reset()
                steps_since_plan = None
            if (state is None or ended
                    or (goal is None and self.planner.condition_kind == 'goal')):
                continue
            observation, received, sequence, (episode, step), resent, stamp = state
            if not self.active:
                continue
            if self.lockstep:
                if sequence == consumed_sequence:
                    continue
                consumed_sequence = sequence
                if (resent and commanded == (episode, step)
                        and received - commanded_at < LOCKSTEP_RESEND_GRACE_S):
                    continue  # sent again while its command was being planned or on its way
                due = steps_since_plan is None or steps_since_plan >= \
                    self.planner.config.replan_every
                if not due:
                    steps_since_plan += 1
                    self._command(self.chunk.next(), self._plan_source)
                    commanded, commanded_at = (episode, step), time.monotonic()
                    continue
            if self.lockstep and not self._await_rewards(episode, step):
                continue  # the state's episode ended while it waited
            self.plan_wait.add(1e3 * (time.monotonic() - received))
            budget = budget_left_ms(self.plan_budget,
                                    self.added_latency_s + time.monotonic() - received)
            # Latency-aware: plan from the state the plan's first command will act on, predicted
            # through the commands in flight, which stay the new chunk's first actions.
            lead = 0 if self.lockstep else self.lead.for_period(self.control_period_s)
            if self.tracking:
                in_flight, in_flight_sources = self.track.ahead(received, lead,
                                                                self.control_period_s)
            else:
                in_flight = self.chunk.ahead(received, lead, self.control_period_s,
                                             self.plan_period_s)
            try:
                if not lead:
                    start_state = observation
                elif self.tracking:
                    start_state, _ = self.planner.predict_tracked(observation, in_flight)
                else:
                    start_state = self.planner.predict_state(observation, in_flight)
                plan = self.plans.plan(start_state, goal=goal,
                                       returns_to_go=self.returns_to_go.at(step + lead),
                                       budget_ms=budget)
            except (ValueError, RuntimeError) as error:
                # No plan, no old plan either: a held action must not outlive its plan.
                self.forget_plan()
                self._last_plan_command = time.monotonic()
                self._command(np.zeros(self.planner.action_dim))
                self.warn('plan', f'planning failed, commanding zero: {error}')
                continue
            if self._episode != episode:
                continue  # planned from the last episode's state: no command for this one
            if self.added_latency_s:
                time.sleep(self.added_latency_s)  # a slower computer (benchmarks)
            # The stamp of the state the plan was made for: lead periods after its state's own.
            self._chunk_source = (stamp + lead * self.control_period_s,
                                  -1 if plan.refine_steps is None else plan.refine_steps,
                                  plan.timings_ms['total'])
            # Command first, bookkeeping after: the robot waits for the command, not the stats.
            # The time of this plan's command is noted before it goes out: a robot may answer it
            # with a state before send returns, and that state must not look like one after a
            # pause (a new episode) however long the plan took.
            self._last_plan_command = time.monotonic()
            if self.lockstep:
                self.chunk.replace(plan.actions, consumed=1)
                self._command(plan.action, self._plan_source)
                commanded, commanded_at = (episode, step), time.monotonic()
            elif self.tracking:
                # Target i is the state for the end of step i from this state's step: the
                # commands in flight follow the old plan's, the new plan's follow. A planner
                # that keeps following its plan (track_states) made none: that one stays.
                if plan.fresh:
                    targets = plan.refined_states[1:]
                    self.track.replace(np.concatenate([in_flight, targets]), start_s=received,
                                       sources=in_flight_sources
                                       + [self._chunk_source] * len(targets))
                with self._lock:
                    latest = self._state
                self._send_tracked(latest[0], latest[5], latest[1])
            else:
                self.chunk.replace(np.concatenate([in_flight, plan.actions]), start_s=received,
                                   installed_s=time.monotonic())
                self._command(self.chunk.at(time.monotonic(), self.control_period_s,
                                            self.plan_period_s), self._plan_source)
            state_to_command_ms = 1e3 * (time.monotonic() - received)
            steps_since_plan = 1
            self.command_latency.add(state_to_command_ms)
            self.lead.add(state_to_command_ms)
            self.lead_steps_used.add(lead)
            self.plan_latency.add(plan.timings_ms['total'])
            self.overhead.add(state_to_command_ms - plan.timings_ms['total'])
            if plan.refine_steps is not None:
                self.refine_steps_used.add(plan.refine_steps)
                self.refine_reason = plan.refine_reason
            if plan.timings_ms['total'] > self.deadline_ms and not self.lockstep:
                self.deadline_misses += 1
            self.on_plan(plan, goal)

    def _await_rewards(self, episode: int, step: int, timeout_s: float = 2.0) -> bool:
        """Wait until the rewards of the episode's steps so far are spent (lockstep only).

        A step's reward goes out before the state it led to, but on its own topic, so it may
        arrive after it; waiting for it makes a lockstep run plan with the target evaluate.py
        uses. A robot that sends no rewards is noticed at the first wait and never waited for.
        False when the state's episode ended meanwhile (the state is not planned on).
        """
        if self.returns_to_go.value is None or self._rewards_absent:
            return True
        deadline = time.monotonic() + timeout_s
        while self.returns_to_go.rewards < step and self._running:
            if self._episode != episode:
                return False
            if time.monotonic() > deadline:
                self._rewards_absent = True
                self.log(f'no reward for step {step} within {timeout_s} s: planning without '
                         'waiting for rewards from now on (the target falls by an even share '
                         'per step)')
                return True
            time.sleep(1e-4)
        return self._episode == episode

    # Output -----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Run a control tick: zero for a stale state, else the command in force, if due."""
        with self._lock:
            state = self._state
        # A command holds until the next tick: zero goes out on the last tick before the
        # state's age passes state_timeout_s, so no command from a stale state is ever in force.
        if state is None or (time.monotonic() - state[1] + self.tick_period_s
                             > self.state_timeout_s):
            self.forget_plan()
            # The history the prior conditions on is stale too: start afresh.
            with self._lock:
                self._history_stale = True
            self.warn('timeout', 'no fresh joint_states: commanding zero')
            self._command(np.zeros(self.planner.action_dim))
            return
        now = time.monotonic()
        if not self.tracking:
            self._send_in_force(now)
        elif not self.track.empty and self.track.target(now, self.control_period_s)[0] is None:
            self._send_changed(np.zeros(self.planner.action_dim), None)  # the plan is used up
        else:
            self._send_changed(self.repeat.last, self._last_source)   # a repeat, if due

    def _send_tracked(self, observation, stamp: float, received: float) -> None:
        """Send the command that takes the state just measured to its plan target.

        It is for the robot's next step (the target of the step from the state's arrival);
        zero where no plan covers that step. The source names the state measured, then the
        plan it follows.
        """
        target, source = self.track.target(received + 0.5 * self.control_period_s,
                                           self.control_period_s)
        if target is None:
            if not self.track.empty:
                self._send_changed(np.zeros(self.planner.action_dim), None)
            return
        try:
            action = self.planner.track(observation, target)
        except ValueError as error:
            self.forget_plan()
            self._command(np.zeros(self.planner.action_dim))
            self.warn('track', f'tracking the plan failed, commanding zero: {error}')
            return
        self._command(action, None if source is None else (stamp, *source))

    def _send_changed(self, action, source) -> None:
        """Send ``action`` if it differs from the last command, or the same after a while."""
        if self.repeat.due(action, time.monotonic()):
            self._command(action, source)

    def _send_in_force(self, at_s: float) -> None:
        """Send the chunk's action for the control step under way at at_s, if it changed.

        The same action goes out again only after REPEAT_AFTER_S.
        """
        action = self.chunk.at(at_s, self.control_period_s, self.plan_period_s)
        if action is None:
            return
        # A chunk that ran out a plan period ago commands zero: no plan's command.
        source = (None if self.chunk.expired(at_s, self.control_period_s, self.plan_period_s)
                  else self._plan_source)
        self._send_changed(action, source)

    @property
    def _plan_source(self) -> tuple:
        """The ~/command_info source of a command that is the plan's own action."""
        return (self._chunk_source[0], *self._chunk_source)

    def _command(self, action, source: tuple | None = None) -> None:
        """Send ``action`` through the node (None: nothing)."""
        if action is not None:
            self.send(action, source)

    def sent(self, action, source: tuple | None = None) -> None:
        """Note a command that went out (the node's own zero included)."""
        self.repeat.sent(action, time.monotonic())
        self._last_source = source
