"""The planner facade: bundle path in, ``plan(observation, goal or returns-to-go)`` out.

Trajectory Diffuser per call (the paper's Algorithm 1 in appendix A.3): the prior rolls out H - 1
states after the history; the diffuser noises that trajectory to level k and denoises it with
classifier-free guidance, the current state written in after every step; inverse dynamics turns
consecutive planned states into actions. With candidates > 1 the refiner draws that many
plans from the one rollout and the bundle's critic picks one. Every plan starts afresh from the
prior's rollout: Trajectory Diffuser has no warm start (Diffuser's is in planning/baselines.py).

Anytime planning: ``plan(..., budget_ms=B)`` has a feasible plan as soon as the prior has rolled
out, and spends what is left of B on as many of the k refinement steps as fit (measured costs
of the recent steps), never more than k. The plan says how many it ran and why.

Normalisation happens in BasePlanner, at the edge, never inside a network; the baselines
(planning/baselines.py) share it. The stages are modules (planning/stages.py) that run eagerly
or captured (planning/accelerate.py), as the config says.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion_planner_ros.config import PlannerConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, draw_noise
from diffusion_planner_ros.planning.accelerate import choose_backend, make_stage
from diffusion_planner_ros.planning.bundle import Bundle, load_bundle
from diffusion_planner_ros.planning.stages import (InverseStage, PriorStage, RankStage,
                                                   RefineStage)


# Anytime planning: recent costs kept per stage, plans per step count measured at warm-up, and
# what a plan spends outside its stages after the refinement (unnormalising, the copy back).
COST_WINDOW = 50
COST_WARMUP_PLANS = 5
EDGE_MS = 0.2


def _p90(values) -> float:
    """90th percentile of a short window (nearest rank; 0 when empty), cheap inside a plan."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[int(0.9 * (len(ordered) - 1) + 0.5)]


class SamplingDiverged(RuntimeError):
    """A guided sampling chain produced NaN or inf: reported, never turned into actions."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; "
                           "use 'auto' or 'cpu'")
    return torch.device(name)


class StageClock:
    """Milliseconds per stage with no host sync between stages: CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.names: list[str] = []
        self.marks = [self._now()]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, name: str) -> None:
        """End the stage called ``name`` now (when the device reaches this point)."""
        self.names.append(name)
        self.marks.append(self._now())

    def stages(self) -> dict:
        """Stage name -> milliseconds; on a GPU this waits for the last stage to finish."""
        if self.cuda:
            self.marks[-1].synchronize()
            return {name: start.elapsed_time(end)
                    for name, start, end in zip(self.names, self.marks, self.marks[1:])}
        return {name: 1e3 * (end - start)
                for name, start, end in zip(self.names, self.marks, self.marks[1:])}


@dataclass
class Plan:
    """What one planning call produced, in env units."""

    action: np.ndarray          # (action_dim,) the action to apply now
    actions: np.ndarray         # (replan_every, action_dim) the chunk until the next replan
    prior_states: np.ndarray | None  # (H, obs_dim) the prior's trajectory (None: no prior)
    refined_states: np.ndarray  # (H, obs_dim) the final plan (equal to prior when k = 0)
    timings_ms: dict = field(default_factory=dict)  # per stage, and total
    # Refinement steps run (k, or fewer under a budget) and why: 'configured' or 'budget'.
    refine_steps: int | None = None
    refine_reason: str = 'configured'
    # False when no plan was made and the action follows an earlier one (track_states).
    fresh: bool = True


@dataclass
class Proposal:
    """A method's plan in normalised units, before the facade unnormalises it."""

    actions: torch.Tensor        # (n, action_dim), n = actions to execute before replanning
    states: torch.Tensor         # (H, obs_dim) the final plan
    prior: torch.Tensor | None   # (H, obs_dim) the prior's plan, if the method has one
    timings_ms: dict             # stage name -> milliseconds
    refine_steps: int | None = None  # steps run, where the method refines
    refine_reason: str = 'configured'


class BasePlanner:
    """What every method's planner shares: checks, normalisation at the edges, history, timing.

    A subclass implements ``_propose(states, conditions, goal)`` on normalised tensors: states
    (1, h, obs_dim) and conditions (1, h, cond_dim) hold the last h entries of the episode.
    """

    methods: tuple = ()
    # How the stages run (planning/accelerate.py); methods without captured stages run eagerly.
    backend = 'eager'
    backend_reason = 'this method has no captured path'

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        self.bundle = bundle
        self.config = config or bundle.config.planner
        self.device = next(next(iter(bundle.models.values())).parameters()).device
        if self.device.type == 'cpu' and self.config.threads:
            torch.set_num_threads(self.config.threads)
        data = bundle.config.data
        self.horizon, self.history = data.horizon, data.history
        self.condition_kind = data.condition
        self.levels = bundle.config.schedule.num_steps if 'diffuser' in bundle.models else 0
        self._check_config(self.config)
        self._states = bundle.normalizers['states']
        self._actions = bundle.normalizers['actions']
        self._goals = bundle.normalizers.get('goals')
        self._generator = torch.Generator(device=self.device)
        self._started, self._budget_ms = 0.0, None  # the plan under way: start, budget
        # The inverse dynamics' and transition ensemble's layers as numpy arrays (track and
        # predict_state), taken at their first use.
        self._numpy_inverse = self._numpy_transition = None
        self.reset()

    @classmethod
    def from_bundle(cls, path: str | Path | Bundle, device: str | None = None,
                    expected_env_id: str | None = None, **overrides) -> 'BasePlanner':
        """Load a bundle and build its planner; keyword overrides replace PlannerConfig fields.

        ``path`` may also be a bundle already loaded (on the CPU), which is then not read again.
        """
        if not isinstance(path, Bundle):
            probe = load_bundle(path, 'cpu', expected_env_id)   # checks the env as it reads
        elif expected_env_id is not None and path.env_id != expected_env_id:
            raise ValueError(f'bundle {path.path} was trained for env {path.env_id!r}, not '
                             f'{expected_env_id!r}')
        else:
            probe = path
        if cls.methods and probe.method not in cls.methods:
            raise ValueError(f'bundle {path} holds method {probe.method!r}; {cls.__name__} '
                             f'runs {cls.methods} (planning.load_planner picks the class)')
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(PlannerConfig)})
        if unknown:
            raise ValueError(f'unknown planner option(s) {unknown}')
        if device is not None:
            overrides['device'] = device
        config = dataclasses.replace(probe.config.planner, **overrides)
        target = resolve_device(config.device)
        if target.type != 'cpu':
            for model in probe.models.values():
                model.to(target)
        return cls(probe, config)

    @property
    def obs_dim(self) -> int:
        """Observation size the bundle expects."""
        return self.bundle.dims.obs

    @property
    def fallback_reasons(self) -> list[str]:
        """Why captured stages run eagerly (empty when every capture worked)."""
        return []

    @property
    def action_dim(self) -> int:
        """Action size the planner returns."""
        return self.bundle.dims.action

    @property
    def method(self) -> str:
        """The bundle's method, as recorded in its config.json."""
        return self.bundle.method

    def reset(self) -> None:
        """Forget the history (call at every episode start) and reseed the sampler."""
        self._history: deque = deque(maxlen=self.history)
        self._generator.manual_seed(self.config.seed)

    def _check_config(self, config: PlannerConfig) -> None:
        """Raise ValueError if ``config`` does not fit this bundle (a subclass adds checks)."""
        if config.replan_every > self.horizon - 1:
            raise ValueError(f'replan_every {config.replan_every} must be below the horizon '
                             f'{self.horizon}: the bundle plans {self.horizon - 1} steps ahead')

    def reconfigure(self, **changes) -> None:
        """Change planner settings at run time, all or none: an invalid change raises ValueError.

        device and threads are fixed when the planner is built. Captured stages are rebuilt and
        capture again on their next call.
        """
        fixed = sorted({'device', 'threads'} & set(changes))
        if fixed:
            raise ValueError(f'{fixed} cannot change after the planner is built')
        config = dataclasses.replace(self.config, **changes)
        self._check_config(config)
        self.config = config
        self._configured()

    def _configured(self) -> None:
        """Rebuild what depends on the config (subclasses rebuild their stages here)."""

    def warm_up(self) -> None:
        """Plan once from a zero history so that captures and lazy set-up happen now.

        The history and the sampler's seed are reset afterwards: warm-up changes no plan.
        """
        width = self.bundle.dims.condition if self.condition_kind == 'goal' else 1
        states = torch.zeros(1, self.history, self.obs_dim, device=self.device)
        conditions = torch.zeros(1, self.history, width, device=self.device)
        goal = np.zeros(width) if self.condition_kind == 'goal' else None
        with torch.no_grad():
            self._propose(states, conditions, goal)
        self.reset()

    def _check_vector(self, name: str, value, size: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (size,):
            raise ValueError(f'{name} must have shape ({size},), got {array.shape}')
        if not np.all(np.isfinite(array)):
            raise ValueError(f'{name} contains NaN or inf: {array.tolist()}')
        return array

    def _check_plausible(self, state: np.ndarray) -> None:
        far = np.flatnonzero(np.abs(state) > self.config.observation_limit)
        if len(far):
            raise ValueError(
                f'observation dims {far.tolist()} are far outside the training data '
                f'(normalised {np.round(state[far], 1).tolist()}, limit '
                f'+-{self.config.observation_limit:g}): refusing to plan')

    def _condition(self, goal, returns_to_go) -> np.ndarray:
        if self.condition_kind == 'goal':
            if goal is None:
                raise ValueError('this bundle is goal-conditioned: pass goal=')
            goal = self._check_vector('goal', goal, self.bundle.dims.condition)
            return self._goals.normalize(goal)
        if returns_to_go is None:
            returns_to_go = self.config.target_return
        rtg = self._check_vector('returns_to_go', np.atleast_1d(returns_to_go), 1)
        return rtg / self.bundle.config.data.returns_scale

    def _tensor(self, values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32, device=self.device)

    def _to_env(self, normalizer, values: torch.Tensor) -> np.ndarray:
        return normalizer.unnormalize(values.cpu().numpy().astype(np.float64))

    def _goal_state(self, goal, width: int | None = None) -> torch.Tensor:
        """Build a normalised plan row: the goal in its goal dimensions, NaN (free) elsewhere.

        width (default obs_dim) is the row size: obs_dim + action_dim for joint trajectories.
        """
        full = np.full(width or self.obs_dim, np.nan)
        dims = list(self.bundle.config.data.goal_state_dims)
        low, high = self._states.low[dims], self._states.high[dims]
        full[dims] = 2.0 * (np.asarray(goal, dtype=np.float64) - low) / (high - low) - 1.0
        return torch.as_tensor(full, dtype=torch.float32, device=self.device)

    def _remember(self, observation, goal, returns_to_go) -> None:
        """Check an observation and its condition, and append them to the history."""
        observation = self._check_vector('observation', observation, self.obs_dim)
        condition = self._condition(goal, returns_to_go)
        state = self._states.normalize(observation)
        self._check_plausible(state)
        self._history.append((state, condition))

    def observe(self, observation, goal=None, returns_to_go=None) -> None:
        """Add an observation to the history without planning (a recorded run-up, say).

        The checks are plan()'s. No noise is drawn and no plan is kept, so the next plan() is
        the same as if the history had been lived.
        """
        self._remember(observation, goal, returns_to_go)

    @torch.no_grad()
    def plan(self, observation, goal=None, returns_to_go=None,
             budget_ms: float | None = None) -> Plan:
        """Plan from the current observation; returns the action and the plans.

        budget_ms (None: no limit) is the time the plan may take; a method that can trade
        quality for time (Trajectory Diffuser's refinement) fits itself into it.
        """
        start = time.perf_counter()
        if budget_ms is not None and not (math.isfinite(budget_ms) and budget_ms >= 0):
            raise ValueError(f'budget_ms must be a finite number >= 0, got {budget_ms}')
        self._started = start
        self._budget_ms = budget_ms
        self._remember(observation, goal, returns_to_go)
        # Pad an episode's first steps with its first entry.
        entries = [self._history[0]] * (self.history - len(self._history)) + list(self._history)
        states = self._tensor([s for s, _ in entries])[None]      # (1, h, obs_dim)
        conditions = self._tensor([c for _, c in entries])[None]  # (1, h, cond_dim)
        proposal = self._propose(states, conditions, goal)
        # Reading the action back is the only host sync of a plan.
        actions = np.clip(self._to_env(self._actions, proposal.actions),
                          self.bundle.action_low, self.bundle.action_high)
        end = time.perf_counter()
        return Plan(
            action=actions[0],
            actions=actions,
            prior_states=(None if proposal.prior is None
                          else self._to_env(self._states, proposal.prior)),
            refined_states=self._to_env(self._states, proposal.states),
            timings_ms={**proposal.timings_ms, 'total': 1e3 * (end - start)},
            refine_steps=proposal.refine_steps,
            refine_reason=proposal.refine_reason,
        )

    @property
    def can_track(self) -> bool:
        """Say whether the bundle has inverse dynamics to follow planned states with."""
        return 'inverse_dynamics' in self.bundle.models

    @property
    def holds_plan_end(self) -> bool:
        """Say whether a followed plan's last state is held once reached (a goal at rest).

        A plan's last state is in general one moment of a motion, and past it a real-time
        node commands zero until the next plan; a plan that ends at its goal at rest (Diffuser's
        maze protocol) means to stay there.
        """
        return False

    def track(self, state, target) -> np.ndarray:
        """Return the action that takes ``state`` to the planned ``target`` state (Eq. 3).

        The inverse dynamics of a plan's own consecutive states gives its actions; from the
        state measured now to the plan's state for the end of this control step it gives the
        command that follows the plan from wherever the robot is (real-time execution). It
        runs in numpy (a fraction of a millisecond, the GIL held throughout), so a node can
        call it on a state's arrival while its worker plans.
        """
        if not self.can_track:
            raise ValueError(f'bundle {self.bundle.path} has no inverse dynamics to track with')
        state = self._check_vector('state', state, self.obs_dim)
        target = self._check_vector('target', target, self.obs_dim)
        return self._track_normalized(self._states.normalize(state),
                                      self._states.normalize(target))

    def _track_normalized(self, state: np.ndarray, target: np.ndarray) -> np.ndarray:
        """track() on normalised states; the action comes back in env units, clipped."""
        if self._numpy_inverse is None:
            self._numpy_inverse = self.bundle.models['inverse_dynamics'].numpy_layers()
        action = self.bundle.models['inverse_dynamics'].numpy_forward(
            self._numpy_inverse, state, target)
        return np.clip(self._actions.unnormalize(action.astype(np.float64)),
                       self.bundle.action_low, self.bundle.action_high)

    def predict_tracked(self, state, targets) -> tuple[np.ndarray, np.ndarray]:
        """Return the state after tracking ``targets`` (n, obs_dim), and the commands sent.

        Each command is tracking's from the state predicted for its step; a NaN target (no
        plan in force then) commands zero.
        """
        if not self.can_track or not self.can_predict:
            raise ValueError(f'bundle {self.bundle.path} needs inverse dynamics and a '
                             'transition model to predict through tracking')
        current = self._check_vector('state', state, self.obs_dim)
        actions = []
        for target in np.asarray(targets, dtype=np.float64).reshape(-1, self.obs_dim):
            actions.append(np.zeros(self.action_dim) if np.isnan(target).any() else
                           self._track_normalized(self._states.normalize(current),
                                                  self._states.normalize(target)))
            current = self._predict_one(current, actions[-1])
        return current, np.array(actions).reshape(-1, self.action_dim)

    @property
    def can_predict(self) -> bool:
        """Say whether the bundle carries a transition model (method.transition_model)."""
        return 'transition' in self.bundle.models

    def predict_state(self, state, actions) -> np.ndarray:
        """Return the state after ``actions`` (n, action_dim) are applied from ``state``.

        The bundle's transition model (the mean of its ensemble) is rolled through the actions,
        in its normalised units, in numpy (see track). Latency-aware planning uses it to plan
        from the state a late command will act on, the commands in flight being known. n = 0
        returns the state.
        """
        if not self.can_predict:
            raise ValueError(f'bundle {self.bundle.path} has no transition model '
                             '(method.transition_model): it cannot predict states')
        state = self._check_vector('state', state, self.obs_dim)
        actions = np.asarray(actions, dtype=np.float64).reshape(-1, self.action_dim)
        if not np.all(np.isfinite(actions)):
            raise ValueError('actions to predict through contain NaN or inf')
        for action in actions:
            state = self._predict_one(state, action)
        return state

    def _predict_one(self, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        """One step of the transition model, env units in and out."""
        model = self.bundle.models['transition']
        if self._numpy_transition is None:
            self._numpy_transition = model.numpy_layers()
        following = model.numpy_predict(self._numpy_transition, self._states.normalize(state),
                                        self._actions.normalize(action))
        return self._states.unnormalize(following.astype(np.float64))

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        raise NotImplementedError


class TrajectoryDiffuserPlanner(BasePlanner):
    """Receding-horizon Trajectory Diffuser planner built from a bundle."""

    methods = ('trajectory_diffuser',)

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        super().__init__(bundle, config)
        self.schedule = DDPMSchedule(bundle.config.schedule, self.device)
        self.prior = bundle.models.get('prior')
        self.diffuser = bundle.models['diffuser']
        self.inverse_dynamics = bundle.models['inverse_dynamics']
        self._budgeted_steps = None  # refine steps forced by warm_up_anytime
        self._configured()
        if self.backend != 'eager':
            self.warm_up()

    def _check_config(self, config: PlannerConfig) -> None:
        super()._check_config(config)
        if config.candidates > 1 and 'critic' not in self.bundle.models:
            raise ValueError(
                f'candidates {config.candidates}: this {self.method} bundle has no critic to '
                'rank plans by; add one with training/train.py --from-bundle BUNDLE --only '
                'critic --set method.critic=true')
        if config.candidates > 1 and self.method == 'trajectory_diffuser' \
                and not config.refine_steps:
            raise ValueError(f'candidates {config.candidates} with refine_steps 0 would be '
                             'copies of one plan: the prior\'s rollout is deterministic')
        for name in ('refine_steps', 'sample_steps'):
            if getattr(config, name) > self.levels:
                raise ValueError(f'{name} {getattr(config, name)} exceeds the diffuser\'s '
                                 f'{self.levels} trained levels')
        if config.warm_start_steps:
            raise ValueError(f'warm_start_steps {config.warm_start_steps}: a {self.method} '
                             'planner plans every time afresh and has no warm start; set it to '
                             '0 (Diffuser and DMEMM planners have one)')

    def _configured(self) -> None:
        """Resolve the backend and wrap the stage modules for it."""
        self.backend, self.backend_reason = choose_backend(self.config.backend, self.device)
        self.stages = {name: make_stage(module, self.backend, self.config.threads)
                       for name, module in self._stage_modules().items()}
        # Anytime planning: a refine stage per number of steps below k, built on first use, and
        # the recent costs (ms) of the refinement per number of steps, and of inverse dynamics.
        self._fewer_steps: dict[int, object] = {}
        self._refine_costs: dict[int, deque] = {}
        self._inverse_costs: deque = deque(maxlen=COST_WINDOW)

    def _refine_with(self, steps: int):
        """Return the refine stage that runs ``steps`` levels (the configured one for k)."""
        if steps == self.config.refine_steps:
            return self.stages['refine']
        if steps not in self._fewer_steps:
            self._fewer_steps[steps] = make_stage(
                RefineStage(self.diffuser, self.schedule, steps, self.config.guidance_scale,
                            self.config.noise_scale), self.backend, self.config.threads)
        return self._fewer_steps[steps]

    def warm_up_anytime(self) -> None:
        """Capture a refine stage for every step count up to k, then measure their costs.

        Call before planning under a budget, so no capture happens inside a deadline. The
        sampler's seed and the history are reset afterwards, as by warm_up.
        """
        for steps in range(self.config.refine_steps, 0, -1):  # captures: not costs
            self._budgeted_steps = steps
            self.warm_up()
        self._refine_costs.clear()
        self._inverse_costs.clear()
        for _ in range(COST_WARMUP_PLANS):
            for steps in range(1, self.config.refine_steps + 1):
                self._budgeted_steps = steps
                self.warm_up()
        self._budgeted_steps = None

    def _steps_within(self, budget_ms: float) -> int:
        """Refinement steps that fit in what is left of budget_ms after the prior (<= k).

        A refinement of n steps is taken to cost the 90th percentile of its recent runs, the
        inverse dynamics likewise; step counts not run yet are not chosen. Before any cost is
        known (no warm_up_anytime), k.
        """
        if not self._refine_costs:
            return self.config.refine_steps
        spent_ms = 1e3 * (time.perf_counter() - self._started)
        left_ms = budget_ms - spent_ms - _p90(self._inverse_costs) - EDGE_MS
        fitting = [steps for steps, costs in self._refine_costs.items()
                   if steps <= self.config.refine_steps and _p90(costs) <= left_ms]
        floor = min(self.config.min_refine_steps, self.config.refine_steps)
        return max(fitting + [floor])

    def _stage_modules(self) -> dict:
        modules = {'prior': PriorStage(self.prior, self.horizon, self.condition_kind == 'goal')}
        if self.config.refine_steps:
            modules['refine'] = RefineStage(self.diffuser, self.schedule, self.config.refine_steps,
                                            self.config.guidance_scale, self.config.noise_scale)
        modules['inverse'] = InverseStage(self.inverse_dynamics, self.config.replan_every)
        return {**modules, **self._rank_modules()}

    def _rank_modules(self) -> dict:
        """Return the candidate-ranking stage when the config draws several plans."""
        if self.config.candidates > 1:
            return {'rank': RankStage(self.bundle.models['critic'])}
        return {}

    def _candidate_condition(self, conditions: torch.Tensor) -> torch.Tensor:
        """Return the condition now once per candidate plan: (N, cond_dim)."""
        return conditions[:, -1].expand(self.config.candidates, -1).contiguous()

    @property
    def fallback_reasons(self) -> list[str]:
        """Why captured stages run eagerly (empty when every capture worked)."""
        return [stage.fallback_reason for stage in self.stages.values()
                if stage.fallback_reason is not None]

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        stages = self.stages  # one set for the whole plan, even if reconfigure runs meanwhile
        clock = StageClock(self.device)
        # Planning stage (lines 8-12): autoregressive rollout of H - 1 states.
        prior_plan = stages['prior'](states, conditions)  # (1, H, obs_dim)
        refine = stages.get('refine')
        clock.mark('prior')

        # Anytime: the prior's rollout is a feasible plan; refine with the steps that fit.
        steps, reason = (refine.module.steps if refine is not None else 0), 'configured'
        if refine is not None:
            budgeted = self._budgeted_steps
            if budgeted is None and self._budget_ms is not None:
                budgeted = self._steps_within(self._budget_ms)
                reason = 'budget' if budgeted < steps else reason
            if budgeted is not None and budgeted != steps:
                steps = budgeted
                refine = self._refine_with(steps) if steps else None

        # Improve stage (lines 14-23), on each candidate: they share the prior's rollout and
        # differ by the refiner's noise.
        refined = prior_plan
        if refine is not None:
            condition = self._candidate_condition(conditions)  # (N, cond)
            plans = prior_plan.expand(len(condition), -1, -1).contiguous()  # (N, H, obs)
            draws = draw_noise(plans.shape, refine.module.steps, self._generator, self.device)
            refined = refine(plans, condition, draws, *self._goal_row(goal))
        clock.mark('refine')
        if refined.shape[0] > 1:
            refined = stages['rank'](refined, condition)  # (1, H, obs) the critic's pick
            clock.mark('rank')

        # Lines 24-25: actions from consecutive planned states.
        actions = stages['inverse'](refined)  # (replan_every, action_dim)
        clock.mark('inverse')
        timings = clock.stages()
        if steps:
            self._refine_costs.setdefault(steps, deque(maxlen=COST_WINDOW)).append(
                timings['refine'])
        self._inverse_costs.append(timings['inverse'])
        return Proposal(actions, refined[0], prior_plan[0], timings, steps, reason)

    def _goal_row(self, goal) -> tuple:
        """Return the goal row written into the plan's last state when inpainting: () or (row,)."""
        if self.config.inpaint_goal and self.condition_kind == 'goal':
            return (self._goal_state(goal),)
        return ()
