"""A plan on the robot's clock (no ROS).

When a state starts a plan, what a plan may spend, which command is in force at each control
step, when a command goes out, and the stamps and latencies around them.

The node calls these; tests drive them without rclpy.
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np


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


def budget_left_ms(budget_ms: float | None, waited_s: float) -> float | None:
    """Return what is left of a plan's budget after its state waited waited_s (None: none)."""
    return None if budget_ms is None else max(0.0, budget_ms - 1e3 * waited_s)


class CommandRepeat:
    """Whether a command goes out: when it changes, and the same again only after a while.

    Under zero-order hold a repeat changes nothing and costs every listener a callback, but a
    driver's command timeout must not expire: the same command goes out again after
    ``repeat_after_s``.
    """

    def __init__(self, repeat_after_s: float):
        self.repeat_after_s = repeat_after_s
        self.last, self.sent_s = None, -math.inf   # the last command sent, and when

    def sent(self, action, now_s: float) -> None:
        """Note that ``action`` went out at now_s."""
        self.last, self.sent_s = np.array(action, dtype=np.float64), now_s

    def due(self, action, now_s: float) -> bool:
        """Say whether ``action`` should go out at now_s."""
        return action is not None and (self.last is None
                                       or not np.array_equal(action, self.last)
                                       or now_s - self.sent_s >= self.repeat_after_s)


class PlanTrack:
    """The states of the plan being followed in real time, by control step (thread-safe).

    Target i is the state the plan reaches at the end of control step i, the step
    [start + i T, start + (i + 1) T) from the arrival of the state the plan started from. Each
    step's command is inverse dynamics from the state measured at that step to its target
    (planner.track): a plan that came late, or one still followed while the next is computed,
    acts from wherever the robot is, never open loop. A NaN target (no plan covered that step)
    commands zero, and so does the time past the last target, unless ``hold_end``: then the
    last target holds (a plan that ends at its goal at rest). Each target keeps the source of
    the plan it came from (what ``~/command_info`` reports), since the first ones may be an
    older plan's.
    """

    def __init__(self, obs_dim: int, hold_end: bool = False):
        self._lock = threading.Lock()
        self._targets = np.zeros((0, obs_dim))
        self._sources: list = []
        self._start_s = 0.0
        self.obs_dim = obs_dim
        self.hold_end = hold_end

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
        target (the last one with hold_end), or where the target is NaN.
        """
        with self._lock:
            index = int((at_s - self._start_s) // period_s)
            if self.hold_end and len(self._targets):
                index = min(index, len(self._targets) - 1)
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
    The anchor itself may be the odd stamp (one far ahead, taken when the gate anchored), kept
    fresh by more stamps of its clock: where, over ``stale_after_s``, more states were rejected
    (older, or leaping ahead) than accepted and some were accepted after a rejection, the gate
    re-anchors on the next state it would reject. A wrong pick is undone the same way a window
    later, so the gate settles on the clock most states follow. A source whose clock starts
    again (no state accepted after its first rejected one) still waits out ``stale_after_s``.
    """

    def __init__(self, stale_after_s: float, leap_tolerance_s: float = 1.0):
        self.stale_after_s = stale_after_s
        self.leap_tolerance_s = leap_tolerance_s
        self._stamp = None   # last accepted stamp (s)
        self._wall = 0.0     # wall time it was accepted at (s)
        # States accepted and rejected over a window of stale_after_s, and accepted after a
        # rejection (two clocks interleaved); at its end, whether to distrust the anchor.
        self._window = -math.inf
        self._accepted = self._rejected = self._contested = 0
        self._distrust_anchor = False

    def check(self, stamp_s: float, now_s: float) -> str | None:
        """Accept (None) or reject (the reason) a state stamped ``stamp_s`` arriving at now_s."""
        if stamp_s == 0.0:
            return None
        if now_s - self._window >= self.stale_after_s:
            self._distrust_anchor = self._rejected > self._accepted and self._contested > 0
            self._window, self._accepted, self._rejected, self._contested = now_s, 0, 0, 0
        elapsed = now_s - self._wall
        problem = None
        if self._stamp is not None and elapsed <= self.stale_after_s:
            if stamp_s < self._stamp:
                problem = (f'stamp {stamp_s:.3f} s is older than the last state '
                           f'({self._stamp:.3f} s)')
            elif stamp_s - self._stamp > elapsed + self.leap_tolerance_s:
                problem = (f'stamp {stamp_s:.3f} s leaps {stamp_s - self._stamp:.3f} s ahead '
                           f'of the last state after {elapsed:.3f} s')
        if problem is not None and not self._distrust_anchor:
            self._rejected += 1
            return problem
        if problem is not None:
            self._distrust_anchor = False   # re-anchored on the clock most states follow
        self._stamp, self._wall = stamp_s, now_s
        self._accepted += 1
        self._contested += self._rejected > 0
        return None
