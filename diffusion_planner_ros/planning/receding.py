"""Receding-horizon bookkeeping shared by the planner node and offline runs (no ROS).

The planner produces an action chunk per plan; commands go out one per control tick from that
chunk, so the command rate does not depend on the plan latency.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque

import numpy as np
import torch

# Python hands the GIL to a waiting thread only every switch interval (5 ms by default). With a
# planning thread and an executor thread in one process, a thread woken by a state or a timer
# can wait that long; 0.5 ms bounds that wait at a small cost in switching.
GIL_SWITCH_INTERVAL_S = 5e-4


def configure_threads(torch_threads: int,
                      switch_interval_s: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Process-wide thread settings for planning next to a ROS executor.

    torch_threads > 0 sets torch's intra-op threads (0 keeps torch's default, one per core).
    """
    if torch_threads < 0:
        raise ValueError(f'torch_threads must be >= 0, got {torch_threads}')
    if torch_threads:
        torch.set_num_threads(torch_threads)
    sys.setswitchinterval(switch_interval_s)


def lower_thread_priority(nice: int) -> int | None:
    """Raise the calling thread's nice value by ``nice``; return it (None: not supported).

    Linux schedules each thread on its own, so a planning thread at a higher nice value gives
    the CPU to the threads that send commands (the executor) and to other processes on the
    robot whenever they are ready. Raising a nice value needs no privileges.
    """
    if nice < 0:
        raise ValueError(f'nice must be >= 0, got {nice}')
    try:
        thread = threading.get_native_id()
        value = min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice)
        os.setpriority(os.PRIO_PROCESS, thread, value)
    except (AttributeError, OSError):
        return None
    return value


class ActionChunk:
    """The current plan's actions, handed out by step or by time (thread-safe).

    In lockstep each received state takes the next action. In real time the action in force is
    the one for the control step under way: action i covers [start + i T, start + (i + 1) T)
    from the receive time of the state the plan started from, so a plan that took longer than
    a period starts at the action for the step the robot is now in, not at one it has passed.
    The last action holds for ``hold_s`` (default one control period; the node passes one plan
    period) past the chunk's end, or past the chunk's arrival when the plan came later than
    that (a late plan's action is still the freshest there is); after that the chunk is stale
    and the action in force is zero.
    """

    def __init__(self, action_dim: int):
        self._lock = threading.Lock()
        self._actions = np.zeros((0, action_dim))
        self._next = 0
        self._start_s = 0.0
        self._installed_s = -math.inf
        self.action_dim = action_dim

    def replace(self, actions: np.ndarray, consumed: int = 0, start_s: float = 0.0,
                installed_s: float | None = None) -> None:
        """Install a new chunk, of which ``consumed`` actions were sent, planned at start_s.

        installed_s is when it arrived (default start_s).
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim or not len(actions):
            raise ValueError(f'an action chunk must be (n >= 1, {self.action_dim}), '
                             f'got {actions.shape}')
        with self._lock:
            self._actions, self._next, self._start_s = actions, consumed, start_s
            self._installed_s = start_s if installed_s is None else installed_s

    def at(self, now_s: float, period_s: float,
           hold_s: float | None = None) -> np.ndarray | None:
        """Return the action for the control step under way at now_s; None before any chunk.

        Past the chunk's end the last action holds for hold_s (default period_s), then zero.
        """
        with self._lock:
            if not len(self._actions):
                return None
            if self._expired(now_s, period_s, hold_s):
                return np.zeros(self.action_dim)
            index = int((now_s - self._start_s) // period_s)
            return self._actions[min(max(index, 0), len(self._actions) - 1)].copy()

    def expired(self, now_s: float, period_s: float, hold_s: float | None = None) -> bool:
        """Say whether the chunk's last action has held for hold_s already (it is zero)."""
        with self._lock:
            return len(self._actions) > 0 and self._expired(
                now_s, period_s, period_s if hold_s is None else hold_s)

    def _expired(self, now_s: float, period_s: float, hold_s: float | None = None) -> bool:
        end = max(self._start_s + len(self._actions) * period_s, self._installed_s)
        return now_s >= end + (period_s if hold_s is None else hold_s)

    def ahead(self, start_s: float, steps: int, period_s: float,
              hold_s: float | None = None) -> np.ndarray:
        """Return the actions in force for the ``steps`` control steps from start_s: (steps, a).

        Step i is [start_s + i T, start_s + (i + 1) T); its action is the chunk's at the step's
        middle, zero where there is no chunk or it has expired. These are the commands in
        flight while a plan started at start_s is computed: a latency-aware plan predicts its
        start state through them and keeps them as its chunk's first actions.
        """
        rows = [self.at(start_s + (i + 0.5) * period_s, period_s, hold_s) for i in range(steps)]
        return np.array([np.zeros(self.action_dim) if row is None else row for row in rows]
                        ).reshape(steps, self.action_dim)

    @property
    def empty(self) -> bool:
        """Say whether there is no chunk (none yet, or cleared)."""
        with self._lock:
            return not len(self._actions)

    def next(self) -> np.ndarray | None:
        """Return the next action; past the end, hold the chunk's last one; None before any."""
        with self._lock:
            if not len(self._actions):
                return None
            action = self._actions[min(self._next, len(self._actions) - 1)]
            self._next += 1
            return action.copy()

    def clear(self) -> None:
        """Forget the chunk (after a state timeout or a reset)."""
        with self._lock:
            self._actions, self._next = np.zeros((0, self.action_dim)), 0


class PlanTrigger:
    """When a state starts a plan in real time.

    A state starts a plan once a plan period less half a control period has passed since the
    state the last plan started from (every state when the two rates are equal), so no plan
    starts from a state that waited for a timer; and at once when no plan is in force (none
    yet, a new goal or episode, a failed plan), whatever the period.
    """

    def __init__(self):
        self._last_s = -math.inf
        self._now = True

    def plan_now(self) -> None:
        """Make the next state start a plan (no plan is in force)."""
        self._now = True

    def due(self, received_s: float, plan_period_s: float, control_period_s: float) -> bool:
        """Say whether the state received at received_s starts a plan (and count it if so)."""
        if self._now or received_s - self._last_s >= plan_period_s - 0.5 * control_period_s:
            self._last_s, self._now = received_s, False
            return True
        return False


def budget_left_ms(budget_ms: float | None, waited_s: float, control_period_s: float,
                   following: bool, share: float) -> float | None:
    """Return what is left of a plan's budget after its state waited waited_s (None: none).

    With no plan being followed meanwhile the plan is due at the robot's next step: its budget
    is at most ``share`` of one control period.
    """
    if budget_ms is None:
        return None
    if not following:
        budget_ms = min(budget_ms, share * 1e3 * control_period_s)
    return max(0.0, budget_ms - 1e3 * waited_s)


class PlanTrack:
    """The states of the plan being followed in real time, by control step (thread-safe).

    Target i is the state the plan reaches at the end of control step i, the step
    [start + i T, start + (i + 1) T) from the arrival of the state the plan started from. Each
    step's command is inverse dynamics from the state measured at that step to its target
    (planner.track): a plan that came late, or one still followed while the next is computed,
    acts from wherever the robot is, never open loop. A NaN target (no plan covered that step)
    and the time past the last target command zero. Each target keeps the source of the plan
    it came from (what ``~/command_info`` reports), since the first ones may be an older plan's.
    """

    def __init__(self, obs_dim: int):
        self._lock = threading.Lock()
        self._targets = np.zeros((0, obs_dim))
        self._sources: list = []
        self._start_s = 0.0
        self.obs_dim = obs_dim

    def replace(self, targets: np.ndarray, start_s: float, sources: list | None = None) -> None:
        """Follow ``targets`` (n >= 1, obs_dim) from start_s on; sources: one per target."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[1] != self.obs_dim or not len(targets):
            raise ValueError(f'plan targets must be (n >= 1, {self.obs_dim}), '
                             f'got {targets.shape}')
        sources = [None] * len(targets) if sources is None else list(sources)
        if len(sources) != len(targets):
            raise ValueError(f'{len(sources)} sources for {len(targets)} targets')
        with self._lock:
            self._targets, self._sources, self._start_s = targets, sources, start_s

    @property
    def empty(self) -> bool:
        """Say whether no plan is followed (none yet, or cleared)."""
        with self._lock:
            return not len(self._targets)

    def target(self, at_s: float, period_s: float) -> tuple[np.ndarray | None, object]:
        """Return the target of the control step under way at at_s and its source.

        The target is None (command zero) before the plan or with none, past its last
        target, or where the target is NaN.
        """
        with self._lock:
            index = int((at_s - self._start_s) // period_s)
            if not 0 <= index < len(self._targets) or np.isnan(self._targets[index]).any():
                return None, None
            return self._targets[index].copy(), self._sources[index]

    def ahead(self, start_s: float, steps: int, period_s: float) -> tuple[np.ndarray, list]:
        """Return the targets of the ``steps`` control steps from start_s (NaN: zero then).

        These are what the commands in flight follow while a plan started at start_s is
        computed: a latency-aware plan predicts its start state through them, and keeps them
        (with their sources) as its first targets.
        """
        rows = [self.target(start_s + (i + 0.5) * period_s, period_s) for i in range(steps)]
        targets = np.array([np.full(self.obs_dim, np.nan) if row is None else row
                            for row, _ in rows]).reshape(steps, self.obs_dim)
        return targets, [source for _, source in rows]

    def clear(self) -> None:
        """Forget the plan (after a state timeout, a new goal or episode)."""
        with self._lock:
            self._targets, self._sources = np.zeros((0, self.obs_dim)), []


def episode_target(planner, target_return: float | None = None) -> float | None:
    """Return the returns-to-go an episode starts at: target_return, else the planner's own.

    None for a planner that is not returns-conditioned; a NaN target_return means unset.
    """
    if planner.condition_kind != 'returns':
        return None
    if target_return is None or math.isnan(target_return):
        return planner.config.target_return
    return float(target_return)


def target_steps(planner) -> int:
    """Return the steps an episode's target is spread over where no rewards are reported.

    The planner's target_steps, else the time limit of the bundle's gymnasium env (the length of
    the episodes its target was chosen for). 0 for a planner that is not returns-conditioned.
    """
    if planner.condition_kind != 'returns':
        return 0
    if planner.config.target_steps:
        return planner.config.target_steps
    import gymnasium as gym

    from diffusion_planner_ros.envs import register_envs

    register_envs()
    try:
        limit = gym.spec(planner.bundle.env_id).max_episode_steps
    except gym.error.Error:
        limit = None
    if not limit:
        raise ValueError(f'bundle env {planner.bundle.env_id!r} has no episode length to spread '
                         'its target over: set planner.target_steps in the bundle\'s config.json')
    return int(limit)


class ReturnsToGo:
    """The returns-to-go condition of one episode.

    Where the robot reports rewards, the target less each reward received (the paper's protocol).
    Where it reports none, as a real robot does, the target less an even share per step:
    ``target / steps`` for each step since the episode began. Measured on Hopper (docs/realtime.md)
    the paced target scores within one point of the rewarded one; a target held constant loses
    two thirds of the score. ``value`` is None for a planner that is not returns-conditioned.
    """

    def __init__(self, target: float | None, steps: int = 0):
        if steps < 0:
            raise ValueError(f'steps must be >= 0 (0: no pace), got {steps}')
        self.target = None if target is None else float(target)
        self.steps = steps
        self.spent, self.rewards = 0.0, 0

    @property
    def value(self) -> float | None:
        """Return the target less the rewards received so far."""
        return None if self.target is None else self.target - self.spent

    def at(self, step: int) -> float | None:
        """Return the condition for the episode's ``step``: rewarded if any came, else paced.

        Past ``steps`` the paced target stays at its last share. Without a pace (steps 0) the
        target less the rewards received, as ``value``.
        """
        if self.target is None or self.rewards or not self.steps:
            return self.value
        return self.target * (1.0 - min(max(step, 0), self.steps - 1) / self.steps)

    def spend(self, reward: float) -> None:
        """Take one step's reward off the target."""
        self.spent += float(reward)
        self.rewards += 1

    def retarget(self, target: float | None) -> None:
        """Change the episode's target; what was spent stays spent."""
        self.target = None if target is None else float(target)

    def reset(self) -> None:
        """Start the next episode at the target again."""
        self.spent, self.rewards = 0.0, 0


class LatencyStats:
    """Rolling latency percentiles in milliseconds (thread-safe)."""

    def __init__(self, window: int = 1000):
        self._lock = threading.Lock()
        self._values: deque = deque(maxlen=window)
        self.count = 0

    def add(self, value_ms: float) -> None:
        """Record one latency."""
        with self._lock:
            self._values.append(float(value_ms))
            self.count += 1

    def percentile(self, q: float) -> float | None:
        """Return the q-th percentile of the window, or None when empty."""
        with self._lock:
            if not self._values:
                return None
            return float(np.percentile(np.array(self._values), q))


class PlanLead:
    """How many control steps ahead of its state a real-time plan starts (latency-aware).

    A plan's command reaches the robot L after the state the plan started from, and the robot
    applies it at its first control step after that: floor(L / T) steps after the state's own
    step (0: the next step, as in lockstep). A plan that starts that many steps ahead, from the
    state predicted through the commands in flight, has its first action applied to the state
    it was planned for. ``steps`` -1 takes L as the 90th percentile of the state-to-command
    times of the last ``window`` plans; 0 plans from the state as it came; n > 0 fixes the lead.
    Never more than ``max_steps``.
    """

    def __init__(self, steps: int, max_steps: int, window: int = 50):
        if steps < -1 or steps > max_steps:
            raise ValueError(f'a plan lead of {steps} steps must be -1 (auto), 0 (none) or at '
                             f'most {max_steps}')
        self.steps, self.max_steps = steps, max_steps
        self._latencies: deque = deque(maxlen=window)

    def add(self, state_to_command_ms: float) -> None:
        """Record one plan's time from its state's arrival to its command going out."""
        self._latencies.append(float(state_to_command_ms))

    def for_period(self, period_s: float) -> int:
        """Return the lead in control steps of period_s."""
        if self.steps >= 0:
            return self.steps
        if not self._latencies:
            return 0
        latency_s = 1e-3 * float(np.percentile(np.array(self._latencies), 90))
        return min(int(latency_s // period_s), self.max_steps)


class StampGate:
    """Drops states whose header stamps go backwards or leap ahead within a live stream.

    A stamp is compared with the last accepted stamp of the same stream, never with this
    machine's clock: the source may run sim time. A zero stamp means "not stamped" and always
    passes. Equal stamps pass (a lockstep bridge sends its state again when a command is lost).
    After ``stale_after_s`` of wall time without an accepted stamp the gate re-anchors on the
    next one, so a restarted driver or simulator, whose clock starts again, gets through.
    """

    def __init__(self, stale_after_s: float, leap_tolerance_s: float = 1.0):
        self.stale_after_s = stale_after_s
        self.leap_tolerance_s = leap_tolerance_s
        self._stamp = None   # last accepted stamp (s)
        self._wall = 0.0     # wall time it was accepted at (s)

    def check(self, stamp_s: float, now_s: float) -> str | None:
        """Accept (None) or reject (the reason) a state stamped ``stamp_s`` arriving at now_s."""
        if stamp_s == 0.0:
            return None
        elapsed = now_s - self._wall
        if self._stamp is not None and elapsed <= self.stale_after_s:
            if stamp_s < self._stamp:
                return (f'stamp {stamp_s:.3f} s is older than the last state '
                        f'({self._stamp:.3f} s)')
            if stamp_s - self._stamp > elapsed + self.leap_tolerance_s:
                return (f'stamp {stamp_s:.3f} s leaps {stamp_s - self._stamp:.3f} s ahead of '
                        f'the last state after {elapsed:.3f} s')
        self._stamp, self._wall = stamp_s, now_s
        return None
