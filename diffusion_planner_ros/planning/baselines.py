"""The seed papers' other planners, on the same schedule, sampler, U-Net and bundle.

- Decision Diffuser: Trajectory Diffuser without the prior; every plan is sampled from pure
  noise over all K levels with classifier-free guidance, then inverse dynamics. With candidates
  > 1 (and a critic in the bundle) the critic picks one of that many plans.
- Diffuser (and DMEMM, which samples the same way): [state, action] trajectories sampled from
  noise (or warm-started from the previous plan) with the current state inpainted in every step
  and the reverse-step mean moved along the gradient of an objective: Diffuser's learned return
  J (its Algorithm 1), DMEMM's reward plus transition log-likelihood (its Eq. 13). The plan's
  own actions are executed. With candidates > 1 the objective picks the best plan.
- BC: an MLP policy, one action per call.
"""

from __future__ import annotations

import dataclasses

import torch

from diffusion_planner_ros.config import PlannerConfig
from diffusion_planner_ros.diffusion import DDPMSchedule, draw_noise, sample
from diffusion_planner_ros.diffusion.sampling import warm_start
from diffusion_planner_ros.planning.bundle import Bundle
from diffusion_planner_ros.planning.planner import (BasePlanner, Proposal, SamplingDiverged,
                                                    StageClock, TrajectoryDiffuserPlanner)
from diffusion_planner_ros.planning.stages import InverseStage, SampleStage


class DecisionDiffuserPlanner(TrajectoryDiffuserPlanner):
    """States-only diffusion from pure noise over all K levels, then inverse dynamics."""

    methods = ('decision_diffuser',)

    def _stage_modules(self) -> dict:
        return {
            'sample': SampleStage(self.diffuser, self.schedule, self.config.guidance_scale,
                                  self.config.noise_scale),
            'inverse': InverseStage(self.inverse_dynamics, self.config.replan_every),
            **self._rank_modules(),
        }

    def _propose(self, states: torch.Tensor, conditions: torch.Tensor, goal) -> Proposal:
        stages = self.stages
        clock = StageClock(self.device)
        condition = self._candidate_condition(conditions)  # (N, cond)
        draws = draw_noise((condition.shape[0], self.horizon, self.obs_dim), self.levels,
                           self._generator, self.device)
        plan = stages['sample'](states[0, -1], condition, draws,
                                *self._goal_row(goal))  # (N, H, obs_dim)
        clock.mark('sample')
        if plan.shape[0] > 1:
            plan = stages['rank'](plan, condition)  # (1, H, obs_dim) the critic's pick
            clock.mark('rank')
        actions = stages['inverse'](plan)
        clock.mark('inverse')
        return Proposal(actions, plan[0], None, clock.stages())


class JointDiffusionPlanner(BasePlanner):
    """Diffuser and DMEMM: guided sampling of [state, action] trajectories."""

    methods = ('diffuser', 'dmemm')

    def __init__(self, bundle: Bundle, config: PlannerConfig | None = None):
        super().__init__(bundle, config)
        self.schedule = DDPMSchedule(bundle.config.schedule, self.device)
        self.diffuser = bundle.models['diffuser']
        self.value = bundle.models.get('value')
        self.transition = bundle.models.get('transition')
        self.reward = bundle.models.get('reward')
        self.width = self.obs_dim + self.action_dim

    def _check_config(self, config: PlannerConfig) -> None:
        super()._check_config(config)
        if config.warm_start_steps > self.levels:
            raise ValueError(f'warm_start_steps {config.warm_start_steps} exceeds the '
                             f'{self.levels} levels the diffuser was trained with')

    def reset(self) -> None:
        """Forget the history and the previous plan (warm start)."""
        super().reset()
        self._previous = None

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
            log_t = self.transition.log_prob(states[:, :-1], actions[:, :-1], states[:, 1:])
            total = total + self.config.transition_guidance * log_t.sum(-1)
        return total

    def _guide(self, condition: torch.Tensor):
        def guide(mean: torch.Tensor, t: int) -> torch.Tensor:
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
        if self.config.inpaint_goal and self.condition_kind == 'goal':
            constraints[self.horizon - 1] = self._goal_state(goal, self.width)
        # The noise model is unconditional (w = 0): the goal enters by inpainting and guidance.
        common = dict(condition=condition, guidance_scale=0.0, constraints=constraints,
                      generator=self._generator, noise_scale=self.config.noise_scale,
                      guide=self._guide(condition), guide_scale=self.config.value_guidance_scale)
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
