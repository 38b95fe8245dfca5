"""The planner facade: bundle path in, ``plan(observation, goal or returns-to-go)`` out.

Trajectory Diffuser per call (the paper's Algorithm 1 in appendix A.3): the prior rolls out H - 1
states after the history; the diffuser noises that trajectory to level k and denoises it with
classifier-free guidance, the current state written in after every step; inverse dynamics turns
consecutive planned states into actions. Normalisation happens in BasePlanner, at the edge, never
inside a network; the baselines (planning/baselines.py) share it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion_planner_ros.config import PlannerConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, refine
from diffusion_planner_ros.planning.bundle import Bundle, load_bundle


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device; "
                           "use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass
class Plan:
    """What one planning call produced, in env units."""

    action: np.ndarray          # (action_dim,) the action to apply now
    actions: np.ndarray         # (replan_every, action_dim) the chunk until the next replan
    prior_states: np.ndarray | None  # (H, obs_dim) the prior's trajectory (None: no prior)
    refined_states: np.ndarray  # (H, obs_dim) the final plan (equal to prior when k = 0)
    timings_ms: dict = field(default_factory=dict)  # per stage, and total


@dataclass
class Proposal:
    """A method's plan in normalised units, before the facade unnormalises it."""

    actions: torch.Tensor        # (n, action_dim), n = actions to execute before replanning
    states: torch.Tensor         # (H, obs_dim) the final plan
    prior: torch.Tensor | None   # (H, obs_dim) the prior's plan, if the method has one
    timings_ms: dict             # stage name -> milliseconds


class BasePlanner:
    """What every method's planner shares: checks, normalisation at the edges, history, timing.

    A subclass implements ``_propose(states, conditions, goal)`` on normalised tensors: states
    (1, h, obs_dim) and conditions (1, h, cond_dim) hold the last h entries of the episode.
    """

    methods: tuple = ()

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        self.bundle = bundle
        self.config = config or bundle.config.planner
        self.device = next(next(iter(bundle.models.values())).parameters()).device
        data = bundle.config.data
        self.horizon, self.history = data.horizon, data.history
        self.condition_kind = data.condition
        self.levels = bundle.config.schedule.num_steps if 'diffuser' in bundle.models else 0
        if self.config.replan_every > self.horizon - 1:
            raise ValueError(f'replan_every {self.config.replan_every} must be below the '
                             f'horizon {self.horizon}')
        self._states = bundle.normalizers['states']
        self._actions = bundle.normalizers['actions']
        self._goals = bundle.normalizers.get('goals')
        self._generator = torch.Generator(device=self.device)
        self.reset()

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | None = None,
                    expected_env_id: str | None = None, **overrides) -> 'BasePlanner':
        """Load a bundle and build its planner; keyword overrides replace PlannerConfig fields."""
        probe = load_bundle(path, 'cpu', expected_env_id)
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

    def _check_vector(self, name: str, value, size: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (size,):
            raise ValueError(f'{name} must have shape ({size},), got {array.shape}')
        if not np.all(np.isfinite(array)):
            raise ValueError(f'{name} contains NaN or inf: {array.tolist()}')
        return array

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

    def _sync(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

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

    @torch.no_grad()
    def plan(self, observation, goal=None, returns_to_go=None) -> Plan:
        """Plan from the current observation; returns the action and the plans."""
        observation = self._check_vector('observation', observation, self.obs_dim)
        condition = self._condition(goal, returns_to_go)
        start = self._sync()
        state = self._states.normalize(observation)
        self._history.append((state, condition))
        # Pad an episode's first steps with its first entry.
        entries = [self._history[0]] * (self.history - len(self._history)) + list(self._history)
        states = self._tensor([s for s, _ in entries])[None]      # (1, h, obs_dim)
        conditions = self._tensor([c for _, c in entries])[None]  # (1, h, cond_dim)
        proposal = self._propose(states, conditions, goal)
        actions = np.clip(self._to_env(self._actions, proposal.actions),
                          self.bundle.action_low, self.bundle.action_high)
        end = self._sync()
        return Plan(
            action=actions[0],
            actions=actions,
            prior_states=(None if proposal.prior is None
                          else self._to_env(self._states, proposal.prior)),
            refined_states=self._to_env(self._states, proposal.states),
            timings_ms={**proposal.timings_ms, 'total': 1e3 * (end - start)},
        )

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        raise NotImplementedError


class TrajectoryDiffuserPlanner(BasePlanner):
    """Receding-horizon Trajectory Diffuser planner built from a bundle."""

    methods = ('trajectory_diffuser',)

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        super().__init__(bundle, config)
        if self.config.refine_steps > self.levels:
            raise ValueError(f'refine_steps {self.config.refine_steps} exceeds the '
                             f'{self.levels} levels the diffuser was trained with')
        self.schedule = DDPMSchedule(bundle.config.schedule, self.device)
        self.prior = bundle.models.get('prior')
        self.diffuser = bundle.models['diffuser']
        self.inverse_dynamics = bundle.models['inverse_dynamics']

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        start = self._sync()
        # Planning stage (lines 8-12): autoregressive rollout of H - 1 states.
        rolled, _ = self.prior.rollout(states, conditions, self.horizon - 1,
                                       hold_condition=self.condition_kind == 'goal')
        prior_plan = torch.cat([states[:, -1:], rolled], dim=1)  # (1, H, obs_dim)
        after_prior = self._sync()

        # Improve stage (lines 14-23).
        refined = refine(self.diffuser, self.schedule, prior_plan, self.config.refine_steps,
                         conditions[:, -1], self.config.guidance_scale,
                         self._constraints(states, goal), self._generator,
                         self.config.noise_scale)
        after_refine = self._sync()

        # Lines 24-25: actions from consecutive planned states.
        actions = self._inverse(refined)
        end = self._sync()
        return Proposal(actions, refined[0], prior_plan[0], {
            'prior': 1e3 * (after_prior - start),
            'refine': 1e3 * (after_refine - after_prior),
            'inverse': 1e3 * (end - after_refine),
        })

    def _constraints(self, states: torch.Tensor, goal) -> dict:
        """Start the plan at the current state; optionally write the goal into its end."""
        constraints = {0: states[0, -1]}
        if self.config.inpaint_goal and self.condition_kind == 'goal':
            constraints[self.horizon - 1] = self._goal_state(goal)
        return constraints

    def _inverse(self, plan: torch.Tensor) -> torch.Tensor:
        """Actions between consecutive planned states: (1, H, obs) -> (replan_every, act)."""
        chunk = self.config.replan_every
        return self.inverse_dynamics(plan[0, :chunk], plan[0, 1:chunk + 1])
