"""The seed papers' other planners, on the same schedule, sampler, U-Net and bundle.

- Decision Diffuser: Trajectory Diffuser without the prior; every plan is sampled from pure
  noise over all K levels with classifier-free guidance, then inverse dynamics. With candidates
  > 1 (and a critic in the bundle) the critic picks one of that many plans.
- Diffuser (and DMEMM, which samples the same way): [state, action] trajectories sampled from
  noise (or warm-started from the previous plan) with the current state inpainted in every step
  and the reverse-step mean moved along the gradient of an objective: Diffuser's learned return
  J (its Algorithm 1), DMEMM's reward plus transition log-likelihood (its Eq. 13). The plan's
  own actions are executed. With candidates > 1 the objective picks the best plan.
  Diffuser's maze protocol (its section 5.1): a bundle trained with goal inpainting plans with
  the goal at rest written into the last state as well, and with ``track_states`` the planner
  plans once per goal and follows the plan's states with a PD controller, planning again when
  the goal changes or the robot drifts from the plan.
- BC: an MLP policy, one action per call.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_planner_ros.config import PlannerConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, draw_noise, sample
from diffusion_planner_ros.diffusion.sampling import warm_start
from diffusion_planner_ros.planning.bundle import Bundle
from diffusion_planner_ros.planning.planner import (BasePlanner, Plan, Proposal,
                                                    SamplingDiverged, StageClock,
                                                    TrajectoryDiffuserPlanner)
from diffusion_planner_ros.planning.stages import InverseStage, SampleStage


class DecisionDiffuserPlanner(TrajectoryDiffuserPlanner):
    """States-only diffusion from pure noise over all K levels, then inverse dynamics."""

    methods = ('decision_diffuser',)

    def _stage_modules(self) -> dict:
        return {
            'sample': SampleStage(self.diffuser, self.schedule, self.config.guidance_scale,
                                  self.config.noise_scale, self.config.sample_steps),
            'inverse': InverseStage(self.inverse_dynamics, self.config.replan_every),
            **self._rank_modules(),
        }

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        stages = self.stages
        clock = StageClock(self.device)
        condition = self._candidate_condition(conditions)  # (N, cond)
        draws = draw_noise((condition.shape[0], self.horizon, self.obs_dim),
                           self.config.sample_steps or self.levels, self._generator, self.device)
        plan = stages['sample'](states[0, -1], condition, draws,
                                *self._goal_row(goal))  # (N, H, obs_dim)
        clock.mark('sample')
        if plan.shape[0] > 1:
            plan = stages['rank'](plan, condition)  # (1, H, obs_dim) the critic's pick
            clock.mark('rank')
        actions = stages['inverse'](plan)
        clock.mark('inverse')
        return Proposal(actions, plan[0], None, clock.stages())


@dataclass
class FollowedPlan:
    """The plan a tracking planner follows: its states (env units), goal, and steps followed."""

    states: np.ndarray   # (H, obs_dim), states[0] the state it was made from
    goal: np.ndarray
    step: int = 0        # control steps since it was made


class JointDiffusionPlanner(BasePlanner):
    """Diffuser and DMEMM: guided sampling of [state, action] trajectories."""

    methods = ('diffuser', 'dmemm')

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        self.width = bundle.dims.obs + bundle.dims.action
        # What track_states follows: positions (the goal's state dims) and velocities (the rest).
        self.positions = list(bundle.config.data.goal_state_dims)
        self.velocities = [d for d in range(bundle.dims.obs) if d not in self.positions]
        # Diffuser's maze protocol: trained with the goal given, so plans end at it, at rest.
        self.goal_at_rest = bundle.config.method.goal_inpainting
        super().__init__(bundle, config)
        self.schedule = DDPMSchedule(bundle.config.schedule, self.device)
        self.diffuser = bundle.models['diffuser']
        self.value = bundle.models.get('value')
        self.transition = bundle.models.get('transition')
        self.reward = bundle.models.get('reward')
        # Plans made under track_states, by reason ('no plan', 'new goal', 'drift', ...).
        self.replans: Counter = Counter()

    def _check_config(self, config: PlannerConfig) -> None:
        super()._check_config(config)
        if config.warm_start_steps > self.levels:
            raise ValueError(f'warm_start_steps {config.warm_start_steps} exceeds the '
                             f'{self.levels} levels the diffuser was trained with')
        if config.track_states:   # (PlannerConfig itself requires replan_every 1)
            positions, velocities = self.positions, self.velocities
            if self.condition_kind != 'goal' or not (
                    len(positions) == len(velocities) == self.action_dim):
                raise ValueError(
                    f'track_states follows positions (data.goal_state_dims {positions}) with '
                    f'their velocities (the other state dims {velocities}) and one action per '
                    f'position; this bundle has condition {self.condition_kind!r}, '
                    f'{self.action_dim} actions')

    def reset(self) -> None:
        """Forget the history, the previous plan (warm start) and the plan followed."""
        super().reset()
        self._previous = None
        self._followed: FollowedPlan | None = None

    @property
    def can_track(self) -> bool:
        """Say whether the planner follows plans by their states (track_states)."""
        return self.config.track_states

    @property
    def holds_plan_end(self) -> bool:
        """Say whether plans end at the goal at rest, to be held there (goal inpainting)."""
        return self.goal_at_rest

    def track(self, state, target) -> np.ndarray:
        """PD action towards the planned ``target`` from ``state`` (Diffuser's maze controller).

        a = p_gain (target position - position) + d_gain (target velocity - velocity), env
        units, clipped to the action bounds.
        """
        if not self.can_track:
            raise ValueError('tracking a Diffuser / DMEMM plan needs planner.track_states')
        state = self._check_vector('state', state, self.obs_dim)
        target = self._check_vector('target', target, self.obs_dim)
        positions, velocities = self.positions, self.velocities
        action = (self.config.track_p_gain * (target[positions] - state[positions])
                  + self.config.track_d_gain * (target[velocities] - state[velocities]))
        return np.clip(action, self.bundle.action_low, self.bundle.action_high)

    def _replan_reason(self, observation: np.ndarray, goal) -> str | None:
        """Why the plan followed must be replaced now, or None to keep following it."""
        followed = self._followed
        if followed is None:
            return 'no plan'
        if goal is not None and not np.array_equal(np.asarray(goal, dtype=np.float64),
                                                   followed.goal):
            return 'new goal'
        if followed.step >= len(followed.states) - 1 and not self.goal_at_rest:
            return 'plan used up'
        # Drift: the distance from the planned path, whatever the step (a node calls this at
        # its plan rate, not at every control step).
        positions = self.positions
        drift = np.linalg.norm(followed.states[:, positions] - observation[positions], axis=1)
        if self.config.drift_limit > 0.0 and drift.min() > self.config.drift_limit:
            return 'drift'
        return None

    def plan(self, observation, goal=None, returns_to_go=None,
             budget_ms: float | None = None) -> Plan:
        """Plan as the base class does; with track_states, follow one plan per goal.

        Each call is one control step: the action is the PD command from the observation to
        the plan's state for the next step (past its end, its last state). A new plan is made
        when there is none, the goal changed, the robot drifted past drift_limit, or (plans
        without the goal at rest) the plan has run out; ``replans`` counts them by reason.
        """
        if not self.config.track_states:
            return super().plan(observation, goal, returns_to_go, budget_ms)
        start = time.perf_counter()
        observation = self._check_vector('observation', observation, self.obs_dim)
        reason = self._replan_reason(observation, goal)
        timings = {}
        if reason is not None:
            self.replans[reason] += 1
            made = super().plan(observation, goal, returns_to_go, budget_ms)
            self._followed = FollowedPlan(made.refined_states,
                                          np.asarray(goal, dtype=np.float64))
            timings = {k: v for k, v in made.timings_ms.items() if k != 'total'}
        else:
            self._remember(observation, goal, returns_to_go)
        followed = self._followed
        target = followed.states[min(followed.step + 1, len(followed.states) - 1)]
        action = self.track(observation, target)
        followed.step += 1
        timings['total'] = 1e3 * (time.perf_counter() - start)
        return Plan(action=action, actions=action[None], prior_states=None,
                    refined_states=followed.states, timings_ms=timings,
                    fresh=reason is not None)

    def objective(self, x: torch.Tensor, t: int, condition: torch.Tensor) -> torch.Tensor:
        """Score plans by what guidance climbs and candidates are ranked by: (N, H, D) -> (N,).

        Diffuser: J(x_t, t) (its Algorithm 1). DMEMM: sum_t R(s_t, a_t) + lambda sum_t
        log T(s_t+1 | s_t, a_t) (its Eq. 13), both in normalised units.
        """
        if self.method == 'diffuser':
            levels = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            return self.value(x, levels, condition)
        states, actions = x[..., :self.obs_dim], x[..., self.obs_dim:]
        conditions = condition[:, None].expand(-1, x.shape[1], -1)  # (N, H, cond)
        total = self.reward(states, actions, conditions).sum(-1)
        if self.config.transition_guidance > 0.0:
            before, moves, after = states[:, :-1], actions[:, :-1], states[:, 1:]
            if self.config.transition_guide == 'normalised':
                # log T times sigma^2 per dimension: -(s' - mu)^2 / 2, mean over members.
                mean, _ = self.transition(before, moves)       # (E, N, H - 1, obs)
                log_t = -0.5 * (after - mean).pow(2).sum(-1).mean(0)
            else:
                log_t = self.transition.log_prob(before, moves, after)
            total = total + self.config.transition_guidance * log_t.sum(-1)
        return total

    def _guide(self, condition: torch.Tensor):
        """Build the guide of the reverse steps: the objective's gradient, below guide_levels.

        The sampler scales it by alpha Sigma_t and clips the move to guide_step_limit.
        """
        levels = self.config.guide_levels

        def guide(mean: torch.Tensor, t: int) -> torch.Tensor:
            if levels and t >= levels:
                return torch.zeros_like(mean)
            with torch.enable_grad():
                x = mean.detach().requires_grad_(True)
                grad = torch.autograd.grad(self.objective(x, t, condition).sum(), x)[0]
            # An objective evaluated far outside the data can overflow: never pass that on.
            return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return guide

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        clock = StageClock(self.device)
        count = self.config.candidates
        condition = conditions[:, -1].expand(count, -1)  # (N, cond)
        first = torch.full((self.width,), float('nan'), device=self.device)
        first[:self.obs_dim] = states[0, -1]
        constraints = {0: first}
        if self.goal_at_rest:
            constraints[self.horizon - 1] = self._goal_at_rest(goal)
        elif self.config.inpaint_goal and self.condition_kind == 'goal':
            constraints[self.horizon - 1] = self._goal_state(goal, self.width)
        # The noise model is unconditional (w = 0): the goal enters by inpainting and guidance.
        common = dict(condition=condition, guidance_scale=0.0, constraints=constraints,
                      generator=self._generator, noise_scale=self.config.noise_scale,
                      guide=self._guide(condition), guide_scale=self.config.value_guidance_scale,
                      guide_limit=self.config.guide_step_limit)
        if self._previous is not None and self.config.warm_start_steps:
            previous = self._previous.expand(count, -1, -1)
            plans = warm_start(self.diffuser, self.schedule, previous, self.config.replan_every,
                               self.config.warm_start_steps, **common)
        else:
            plans = sample(self.diffuser, self.schedule, (count, self.horizon, self.width),
                           device=self.device, **common)
        clock.mark('sample')
        if not torch.isfinite(plans).all():
            raise SamplingDiverged(f'{self.method} sampling diverged: the guide\'s gradient '
                                   f'grew without bound (value_guidance_scale '
                                   f'{self.config.value_guidance_scale} is too large)')
        best = 0
        if count > 1:
            best = int(torch.argmax(self.objective(plans, 0, condition)))
        plan = plans[best:best + 1]  # (1, H, D)
        self._previous = plan
        clock.mark('rank')
        actions = plan[0, :self.config.replan_every, self.obs_dim:]
        return Proposal(actions, plan[0, :, :self.obs_dim], None, clock.stages())

    def _goal_at_rest(self, goal) -> torch.Tensor:
        """Return the plan's last row under the maze protocol: the goal, other state dims 0.

        Normalised; the action entries stay free (NaN).
        """
        row = self._goal_state(goal, self.width)
        rest = self._states.normalize(np.zeros(self.obs_dim))[self.velocities]
        row[self.velocities] = torch.as_tensor(rest, dtype=row.dtype, device=row.device)
        return row


class BCPlanner(BasePlanner):
    """Behaviour cloning: the policy's action for the current state, one per call."""

    methods = ('bc',)

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        super().__init__(bundle, config)
        self.policy = bundle.models['policy']
        self._configured()

    def _configured(self) -> None:
        # A policy has no plan to take further actions from: it is queried every step.
        self.config = dataclasses.replace(self.config, replan_every=1)

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        clock = StageClock(self.device)
        action = self.policy(states[:, -1], conditions[:, -1])  # (1, act)
        clock.mark('policy')
        return Proposal(action, states[0, -1:], None, clock.stages())
