"""What each method's networks learn: their losses, and each method's training recipe.

Trajectory Diffuser's prior, U-Net, inverse dynamics and optional candidate critic; Diffuser's
joint state-action U-Net and return model J; DMEMM's transition ensemble, reward model and
modulated U-Net (its Eq. 8-12); the BC policy. ``component_setups`` pairs each network of a method
with its loss, its batches and its steps; trainer.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_planner_ros.config import ExperimentConfig, MethodConfig
from diffusion_planner_ros.data.sequence import (ACTIONS, CONDITIONS, NEXT_STATES, REWARDS,
                                                 STATES, SequenceDataset)
from diffusion_planner_ros.diffusion import DDPMSchedule
from diffusion_planner_ros.diffusion.modulation import one_shot_denoise
from diffusion_planner_ros.models import method_components


def prior_loss(prior: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token MSE on states and conditions (paper Eq. 4 with a fixed-variance Gaussian)."""
    states, conditions = batch[STATES], batch[CONDITIONS]  # (B, L, obs), (B, L, cond)
    next_s, next_c, _ = prior(states[:, :-1], conditions[:, :-1])
    return F.mse_loss(next_s, states[:, 1:]) + F.mse_loss(next_c, conditions[:, 1:])


def diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor], schedule: DDPMSchedule,
                   condition_dropout: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising loss with condition dropout (paper Eq. 6); weighted per window (B,).

    The model learns eps (the paper) or x0, as the schedule's ``prediction`` says.
    The first state is given at sampling time (it is the current state), so it is written into
    the noisy sample and left out of the loss.
    """
    x0 = batch[STATES]                      # (B, H, obs_dim)
    condition = batch[CONDITIONS][:, 0]     # (B, cond_dim)
    batch_size = x0.shape[0]
    t = torch.randint(0, schedule.num_steps, (batch_size,), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.add_noise(x0, noise, t)
    x_t[:, 0] = x0[:, 0]
    keep = torch.bernoulli(torch.full((batch_size,), 1.0 - condition_dropout,
                                      device=x0.device))
    output = model(x_t, t, condition, keep)
    target = schedule.target(x0, noise)
    if weights is None:
        return F.mse_loss(output[:, 1:], target[:, 1:])
    per_window = (output[:, 1:] - target[:, 1:]).pow(2).flatten(1).mean(1)  # (B,)
    return (per_window * weights).mean()


def inverse_dynamics_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between predicted and recorded (normalised) actions."""
    return F.mse_loss(model(batch[STATES], batch[NEXT_STATES]), batch[ACTIONS])


def joint_trajectories(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[state, action] rows of Diffuser's trajectories: (B, H, obs_dim + action_dim)."""
    return torch.cat([batch[STATES], batch[ACTIONS]], dim=-1)


def given_rows(horizon: int, goal_inpainting: bool) -> list[int]:
    """Rows of a joint trajectory whose state is given at sampling time: the first, the last.

    The first state is the state now; with goal inpainting the last is the goal (Diffuser's
    maze protocol), so training writes both into x_t and leaves them out of the loss.
    """
    return [0, horizon - 1] if goal_inpainting else [0]


def _noised_joint(x0: torch.Tensor, schedule: DDPMSchedule, obs_dim: int,
                  goal_inpainting: bool = False, t: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None):
    """Levels, noise and x_t for a batch of joint trajectories, the given states kept clean.

    Levels t (B,) and noise are drawn unless given.
    """
    if t is None:
        t = torch.randint(0, schedule.num_steps, (x0.shape[0],), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = with_given(schedule.add_noise(x0, noise, t), x0, obs_dim, goal_inpainting)
    return t, noise, x_t


def with_given(x: torch.Tensor, x0: torch.Tensor, obs_dim: int,
               goal_inpainting: bool) -> torch.Tensor:
    """Return a copy of x whose given rows' states (see given_rows) are the clean x0's."""
    x = x.clone()
    for row in given_rows(x0.shape[1], goal_inpainting):
        x[:, row, :obs_dim] = x0[:, row, :obs_dim]
    return x


def unconditional(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  condition: torch.Tensor) -> torch.Tensor:
    """Diffuser's noise model sees no condition (mask 0): goals enter by inpainting/guidance."""
    return model(x, t, condition, torch.zeros(x.shape[0], device=x.device))


def joint_diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                         schedule: DDPMSchedule, obs_dim: int,
                         weights: torch.Tensor | None = None,
                         goal_inpainting: bool = False) -> torch.Tensor:
    """Diffuser's denoising loss on [state, action] trajectories; weighted per window (Eq. 11).

    The first state (and with goal inpainting the last) is given at sampling time, so it is
    written into x_t and left out. The model learns eps or x0, as the schedule says.
    """
    x0 = joint_trajectories(batch)
    t, noise, x_t = _noised_joint(x0, schedule, obs_dim, goal_inpainting)
    output = unconditional(model, x_t, t, batch[CONDITIONS][:, 0])
    error = (output - schedule.target(x0, noise)).pow(2)
    rows = given_rows(x0.shape[1], goal_inpainting)
    for row in rows:
        error[:, row, :obs_dim] = 0.0
    per_window = error.flatten(1).sum(1) / (error[0].numel() - len(rows) * obs_dim)  # (B,)
    if weights is not None:
        per_window = per_window * weights
    return per_window.mean()


def dmemm_loss(model: nn.Module, batch: dict[str, torch.Tensor], schedule: DDPMSchedule,
               obs_dim: int, method: MethodConfig, transition: nn.Module, reward: nn.Module,
               data: SequenceDataset) -> torch.Tensor:
    """L_total = L_wdiff + lambda_tr L_tr + lambda_rd L_rd (DMEMM Eq. 12).

    L_tr (Eq. 9) and L_rd (Eq. 10) are taken on a denoised trajectory that depends on the noise
    model, so their gradients reach it: Eq. 8's one-shot trajectory, or the network's own clean
    estimate from tau_k (method.modulation_trajectory). The environment models (trained first)
    stay frozen.
    The network sees the given states (the start; with goal inpainting the goal too) clean in
    Eq. 8's forward copies, as in training and sampling, and the denoised trajectory keeps them.
    """
    weights = data.reward_weights(batch[REWARDS]) if method.reward_weighting else None
    loss = joint_diffusion_loss(model, batch, schedule, obs_dim, weights,
                                method.goal_inpainting)
    if method.transition_weight == 0.0 and method.reward_weight == 0.0:
        return loss
    x0 = joint_trajectories(batch)
    condition = batch[CONDITIONS][:, 0]

    given = method.goal_inpainting
    levels, noise = _modulation_draws(x0, schedule, method)
    if method.modulation_trajectory == 'predicted':
        _, _, x_k = _noised_joint(x0, schedule, obs_dim, given, levels, noise)
        tau = schedule.original(unconditional(model, x_k, levels, condition), x_k, levels)
    else:
        def epsilon(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            x = with_given(x, x0[rows], obs_dim, given)
            return schedule.epsilon(unconditional(model, x, t, condition[rows]), x, t)

        tau = one_shot_denoise(epsilon, schedule, x0, levels, noise, method.modulation_terms)
    tau = with_given(tau, x0, obs_dim, given)
    states, actions = tau[..., :obs_dim], tau[..., obs_dim:]  # (B, H, obs), (B, H, act)
    return loss + modulation_loss(states, actions, condition, method, transition, reward)


def _modulation_draws(x0: torch.Tensor, schedule: DDPMSchedule,
                      method: MethodConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels k (B,) of Eq. 9-10, from 1 .. modulation_levels, and the noise eps of Eq. 8."""
    top = min(method.modulation_levels or schedule.num_steps, schedule.num_steps)
    levels = torch.randint(0, top, (x0.shape[0],), device=x0.device)
    return levels, torch.randn_like(x0)


def modulation_loss(states: torch.Tensor, actions: torch.Tensor, condition: torch.Tensor,
                    method: MethodConfig, transition: nn.Module,
                    reward: nn.Module) -> torch.Tensor:
    """lambda_tr L_tr - lambda_rd sum R (DMEMM Eq. 9-10, 12) on a denoised trajectory.

    states (B, H, obs); actions (B, A, act) for the first A states (A = H or H - 1), condition
    (B, cond). Both environment models stay frozen: gradients reach the trajectory only.
    """
    loss = states.new_zeros(())
    steps = actions.shape[1]
    if method.transition_weight > 0.0:
        last = states.shape[1] - 1
        means, _ = frozen_call(transition, states[:, :-1], actions[:, :last])  # (E, B, H-1, obs)
        loss = loss + method.transition_weight * (
            (states[:, 1:] - means.mean(0)).pow(2).sum(-1).sum(-1).mean())
    if method.reward_weight > 0.0:
        conditions = condition[:, None].expand(-1, steps, -1)  # (B, A, cond)
        rewards = frozen_call(reward, states[:, :steps], actions, conditions)  # (B, A)
        loss = loss - method.reward_weight * rewards.sum(-1).mean()
    return loss


def value_loss(model: nn.Module, batch: dict[str, torch.Tensor], schedule: DDPMSchedule,
               obs_dim: int, data: SequenceDataset,
               goal_inpainting: bool = False) -> torch.Tensor:
    """Diffuser's J: regress the clean window's normalised return from its noisy version."""
    x0 = joint_trajectories(batch)
    t, _, x_t = _noised_joint(x0, schedule, obs_dim, goal_inpainting)
    target = data.reward_weights(batch[REWARDS])  # (B,) in [0, 1]
    return F.mse_loss(model(x_t, t, batch[CONDITIONS][:, 0]), target)


def critic_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                data: SequenceDataset) -> torch.Tensor:
    """Regress a clean state window's normalised return: the candidate critic (level 0 only).

    Plans are ranked once they are denoised, so the critic never sees noise; the target is the
    one Diffuser's J regresses (the window's mean reward scaled into [0, 1]).
    """
    states = batch[STATES]  # (B, H, obs_dim)
    levels = torch.zeros(states.shape[0], dtype=torch.long, device=states.device)
    target = data.reward_weights(batch[REWARDS])  # (B,)
    return F.mse_loss(model(states, levels, batch[CONDITIONS][:, 0]), target)


def transition_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gaussian NLL of the ensemble on (s, a, s') triples."""
    return model.nll(batch[STATES], batch[ACTIONS], batch[NEXT_STATES])


def reward_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                data: SequenceDataset) -> torch.Tensor:
    """MSE of R(s, a, condition) against the per-step reward scaled into [0, 1]."""
    low, high = data.reward_range
    target = (batch[REWARDS] - low) / max(high - low, 1e-8)  # (B, H)
    return F.mse_loss(model(batch[STATES], batch[ACTIONS], batch[CONDITIONS]), target)


def policy_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Behaviour cloning: MSE on normalised actions."""
    return F.mse_loss(model(batch[STATES][:, 0], batch[CONDITIONS][:, 0]), batch[ACTIONS][:, 0])


@dataclass
class ComponentSetup:
    """How to train one network: its loss, its batches, its steps and EMA decay.

    With ``warmup_loss_fn`` the first ``warmup_steps`` steps train on it instead of loss_fn.
    """

    loss_fn: Callable
    sample_batch: Callable
    steps: int
    ema_decay: float | None = None
    warmup_loss_fn: Callable | None = None
    warmup_steps: int = 0


def component_setups(config: ExperimentConfig, data: SequenceDataset, schedule: DDPMSchedule,
                     models: dict[str, nn.Module]) -> dict[str, ComponentSetup]:
    """Return the training recipe of every network of the config's method, in order."""
    train, method = config.training, config.method
    batch, horizon, obs_dim = train.batch_size, config.data.horizon, data.obs_dim
    windows = partial(data.sample_windows, batch_size=batch, length=horizon)
    joint_windows = partial(windows, with_actions=True)
    recipes = {
        'prior': lambda: ComponentSetup(
            prior_loss, partial(data.sample_windows, batch_size=batch,
                                length=config.data.history + horizon), train.prior_steps),
        'inverse_dynamics': lambda: ComponentSetup(
            inverse_dynamics_loss, partial(data.sample_transitions, batch_size=batch),
            train.inverse_dynamics_steps),
        'value': lambda: ComponentSetup(
            partial(value_loss, schedule=schedule, obs_dim=obs_dim, data=data,
                    goal_inpainting=method.goal_inpainting), joint_windows,
            train.value_steps),
        'critic': lambda: ComponentSetup(
            partial(critic_loss, data=data), joint_windows, train.critic_steps),
        'transition': lambda: ComponentSetup(
            transition_loss, partial(data.sample_transitions, batch_size=batch),
            train.dynamics_steps),
        'reward': lambda: ComponentSetup(
            partial(reward_loss, data=data), joint_windows, train.dynamics_steps),
        'policy': lambda: ComponentSetup(
            policy_loss, partial(data.sample_windows, batch_size=batch, length=1,
                                 with_actions=True), train.policy_steps),
    }
    if method.name == 'diffuser':
        recipes['diffuser'] = lambda: ComponentSetup(
            partial(joint_diffusion_loss, schedule=schedule, obs_dim=obs_dim,
                    goal_inpainting=method.goal_inpainting), joint_windows,
            train.diffuser_steps, train.ema_decay)
    elif method.name == 'dmemm':
        def dmemm(modulated: MethodConfig) -> Callable:
            return partial(dmemm_loss, schedule=schedule, obs_dim=obs_dim, method=modulated,
                           transition=models['transition'], reward=models['reward'], data=data)

        # Before modulation_start: Eq. 11's weighted diffusion loss alone.
        unmodulated = replace(method, transition_weight=0.0, reward_weight=0.0)
        recipes['diffuser'] = lambda: ComponentSetup(
            dmemm(method), joint_windows, train.diffuser_steps, train.ema_decay,
            dmemm(unmodulated), method.modulation_start)
    else:
        recipes['diffuser'] = lambda: ComponentSetup(
            partial(diffusion_loss, schedule=schedule, condition_dropout=train.condition_dropout),
            windows, train.diffuser_steps, train.ema_decay)
    return {name: recipes[name]() for name in method_components(config)}


def frozen_call(model: nn.Module, *args) -> torch.Tensor:
    """model(*args) with its parameters detached: gradients reach the inputs only."""
    tensors = {name: value.detach() for name, value in model.named_parameters()}
    return torch.func.functional_call(model, tensors, args)
