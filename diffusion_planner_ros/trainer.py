"""Training of every method's networks: losses, EMA, checkpoints with resume, DDP.

Trajectory Diffuser's prior, U-Net, inverse dynamics and optional candidate critic; Diffuser's
joint state-action U-Net and return model J; DMEMM's transition ensemble, reward model and
modulated U-Net (its Eq. 8-12), also as the objective of a states-only U-Net
(method.dmemm_refiner); the BC policy. Checkpoints are safetensors (model, EMA,
optimiser tensors) plus JSON (step, optimiser groups), so resuming never unpickles anything.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from diffusion_planner_ros.config import ExperimentConfig, MethodConfig
from diffusion_planner_ros.data.sequence import (ACTIONS, CONDITIONS, NEXT_STATES, REWARDS,
                                                 STATES, SequenceDataset)
from diffusion_planner_ros.diffusion import DDPMSchedule
from diffusion_planner_ros.diffusion.modulation import one_shot_denoise
from diffusion_planner_ros.models import method_components

COMPONENTS = ('prior', 'diffuser', 'inverse_dynamics', 'value', 'critic', 'transition', 'reward',
              'policy')


@dataclass
class DistributedContext:
    """Rank and world size; world_size 1 means plain single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group started by torchrun (if any) and pick this rank's device."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    use_cuda = device_name == 'cuda' or (device_name == 'auto' and torch.cuda.is_available())
    if device_name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    if world_size == 1:
        return DistributedContext(), torch.device('cuda' if use_cuda else 'cpu')
    context = DistributedContext(int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                                 world_size)
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
        return context, torch.device('cuda', context.local_rank)
    return context, torch.device('cpu')


def prior_loss(prior: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token MSE on states and conditions (paper Eq. 4 with a fixed-variance Gaussian)."""
    states, conditions = batch[STATES], batch[CONDITIONS]  # (B, L, obs), (B, L, cond)
    next_s, next_c, _ = prior(states[:, :-1], conditions[:, :-1])
    return F.mse_loss(next_s, states[:, 1:]) + F.mse_loss(next_c, conditions[:, 1:])


def diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor], schedule: DDPMSchedule,
                   condition_dropout: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Epsilon-prediction loss with condition dropout (paper Eq. 6); weighted per window (B,).

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
    eps = model(x_t, t, condition, keep)
    if weights is None:
        return F.mse_loss(eps[:, 1:], noise[:, 1:])
    per_window = (eps[:, 1:] - noise[:, 1:]).pow(2).flatten(1).mean(1)  # (B,)
    return (per_window * weights).mean()


def inverse_dynamics_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between predicted and recorded (normalised) actions."""
    return F.mse_loss(model(batch[STATES], batch[NEXT_STATES]), batch[ACTIONS])


def joint_trajectories(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[state, action] rows of Diffuser's trajectories: (B, H, obs_dim + action_dim)."""
    return torch.cat([batch[STATES], batch[ACTIONS]], dim=-1)


def _noised_joint(x0: torch.Tensor, schedule: DDPMSchedule, obs_dim: int):
    """Levels, noise and x_t for a batch of joint trajectories, the first state kept clean."""
    t = torch.randint(0, schedule.num_steps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.add_noise(x0, noise, t)
    x_t[:, 0, :obs_dim] = x0[:, 0, :obs_dim]
    return t, noise, x_t


def unconditional(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  condition: torch.Tensor) -> torch.Tensor:
    """Diffuser's noise model sees no condition (mask 0): goals enter by inpainting/guidance."""
    return model(x, t, condition, torch.zeros(x.shape[0], device=x.device))


def joint_diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                         schedule: DDPMSchedule, obs_dim: int,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Diffuser's epsilon loss on [state, action] trajectories; weighted per window (DMEMM Eq. 11).

    The first state is given at sampling time, so it is written into x_t and left out.
    """
    x0 = joint_trajectories(batch)
    t, noise, x_t = _noised_joint(x0, schedule, obs_dim)
    eps = unconditional(model, x_t, t, batch[CONDITIONS][:, 0])
    error = (eps - noise).pow(2)
    error[:, 0, :obs_dim] = 0.0
    per_window = error.flatten(1).sum(1) / (error[0].numel() - obs_dim)  # (B,)
    if weights is not None:
        per_window = per_window * weights
    return per_window.mean()


def dmemm_loss(model: nn.Module, batch: dict[str, torch.Tensor], schedule: DDPMSchedule,
               obs_dim: int, method: MethodConfig, transition: nn.Module, reward: nn.Module,
               data: SequenceDataset) -> torch.Tensor:
    """L_total = L_wdiff + lambda_tr L_tr + lambda_rd L_rd (DMEMM Eq. 12).

    L_tr (Eq. 9) and L_rd (Eq. 10) are taken on the one-shot denoised trajectory of Eq. 8, so
    their gradients reach the noise model; the environment models (trained first) stay frozen.
    """
    weights = data.reward_weights(batch[REWARDS]) if method.reward_weighting else None
    loss = joint_diffusion_loss(model, batch, schedule, obs_dim, weights)
    if method.transition_weight == 0.0 and method.reward_weight == 0.0:
        return loss
    x0 = joint_trajectories(batch)
    condition = batch[CONDITIONS][:, 0]

    def epsilon(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return unconditional(model, x, t, condition[rows])

    tau = one_shot_denoise(epsilon, schedule, x0, *_modulation_draws(x0, schedule, method),
                           method.modulation_terms)
    states, actions = tau[..., :obs_dim], tau[..., obs_dim:]  # (B, H, obs), (B, H, act)
    return loss + modulation_loss(states, actions, condition, method, transition, reward)


def dmemm_refiner_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                       schedule: DDPMSchedule, condition_dropout: float, method: MethodConfig,
                       inverse_dynamics: nn.Module, transition: nn.Module, reward: nn.Module,
                       data: SequenceDataset) -> torch.Tensor:
    """Return DMEMM's objective (Eq. 11-12) for the states-only U-Net (dmemm_refiner).

    Eq. 6 weighted per window as in Eq. 11, plus Eq. 9-10 on the one-shot denoised state
    trajectory (Eq. 8 with the conditional noise model). Those terms need actions, which the
    frozen inverse dynamics supplies between consecutive denoised states (paper Eq. 3).
    """
    weights = data.reward_weights(batch[REWARDS]) if method.reward_weighting else None
    loss = diffusion_loss(model, batch, schedule, condition_dropout, weights)
    if method.transition_weight == 0.0 and method.reward_weight == 0.0:
        return loss
    x0, condition = batch[STATES], batch[CONDITIONS][:, 0]  # (B, H, obs), (B, cond)

    def epsilon(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return model(x, t, condition[rows], torch.ones(x.shape[0], device=x.device))

    states = one_shot_denoise(epsilon, schedule, x0, *_modulation_draws(x0, schedule, method),
                              method.modulation_terms)
    actions = frozen_call(inverse_dynamics, states[:, :-1], states[:, 1:])  # (B, H-1, act)
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
               obs_dim: int, data: SequenceDataset) -> torch.Tensor:
    """Diffuser's J: regress the clean window's normalised return from its noisy version."""
    x0 = joint_trajectories(batch)
    t, _, x_t = _noised_joint(x0, schedule, obs_dim)
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
    """How to train one network: its loss, its batches, its steps and EMA decay."""

    loss_fn: Callable
    sample_batch: Callable
    steps: int
    ema_decay: float | None = None


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
            partial(value_loss, schedule=schedule, obs_dim=obs_dim, data=data), joint_windows,
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
            partial(joint_diffusion_loss, schedule=schedule, obs_dim=obs_dim), joint_windows,
            train.diffuser_steps, train.ema_decay)
    elif method.name == 'dmemm':
        recipes['diffuser'] = lambda: ComponentSetup(
            partial(dmemm_loss, schedule=schedule, obs_dim=obs_dim, method=method,
                    transition=models['transition'], reward=models['reward'], data=data),
            joint_windows, train.diffuser_steps, train.ema_decay)
    elif method.dmemm_refiner:
        recipes['diffuser'] = lambda: ComponentSetup(
            partial(dmemm_refiner_loss, schedule=schedule,
                    condition_dropout=train.condition_dropout, method=method,
                    inverse_dynamics=models['inverse_dynamics'],
                    transition=models['transition'], reward=models['reward'], data=data),
            joint_windows, train.diffuser_steps, train.ema_decay)
    else:
        recipes['diffuser'] = lambda: ComponentSetup(
            partial(diffusion_loss, schedule=schedule, condition_dropout=train.condition_dropout),
            windows, train.diffuser_steps, train.ema_decay)
    return {name: recipes[name]() for name in method_components(config)}


def frozen_call(model: nn.Module, *args) -> torch.Tensor:
    """model(*args) with its parameters detached: gradients reach the inputs only."""
    tensors = {name: value.detach() for name, value in model.named_parameters()}
    return torch.func.functional_call(model, tensors, args)


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights: shadow <- decay * shadow + (1 - decay) * current."""
        for shadow, current in zip(self.model.state_dict().values(),
                                   model.state_dict().values()):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(current, 1.0 - self.decay)
            else:
                shadow.copy_(current)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state['state'].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f'{index}.{key}'] = value.detach().cpu().contiguous()
            else:
                scalars[f'{index}.{key}'] = value
    return tensors, {'param_groups': state['param_groups'], 'scalars': scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    entries: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split('.', 1)
        entries.setdefault(int(index), {})[key] = value
    for name, value in meta['scalars'].items():
        index, key = name.split('.', 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({'state': entries, 'param_groups': meta['param_groups']})


class ComponentTrainer:
    """Adam training of one model with optional EMA, periodic checkpoints and resume."""

    def __init__(self, name: str, model: nn.Module, loss_fn: Callable, sample_batch: Callable,
                 learning_rate: float, device: torch.device, checkpoint_dir: Path,
                 context: DistributedContext, ema_decay: float | None = None):
        self.name, self.device, self.context = name, device, context
        self.model = model.to(device)
        self.ema = EMA(self.model, ema_decay) if ema_decay is not None else None
        self.network = self.model
        if context.world_size > 1:
            ids = [device.index] if device.type == 'cuda' else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn, self.sample_batch = loss_fn, sample_batch
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.step = 0
        # The logged losses since step 0; a checkpoint carries them across a resume.
        self.losses: list[float] = []

    def _paths(self) -> tuple[Path, Path]:
        return (self.checkpoint_dir / f'{self.name}.safetensors',
                self.checkpoint_dir / f'{self.name}.json')

    def save_checkpoint(self) -> None:
        """Write model, EMA and optimiser state (main rank only)."""
        if not self.context.is_main:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f'model.{k}': v.detach().cpu().contiguous()
                   for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f'ema.{k}': v.detach().cpu().contiguous()
                            for k, v in self.ema.model.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer)
        tensors.update({f'optim.{k}': v for k, v in opt_tensors.items()})
        weights, meta = self._paths()
        save_file(tensors, str(weights))
        meta.write_text(json.dumps({'step': self.step, 'optimizer': opt_meta,
                                    'losses': self.losses}) + '\n')

    def try_resume(self) -> bool:
        """Load the checkpoint of this component if there is one."""
        weights, meta_path = self._paths()
        if not (weights.is_file() and meta_path.is_file()):
            return False
        tensors = load_file(str(weights))
        meta = json.loads(meta_path.read_text())

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.model.load_state_dict(part('model.'))
        if self.ema is not None:
            self.ema.model.load_state_dict(part('ema.'))
        _restore_optimizer(self.optimizer, part('optim.'), meta['optimizer'])
        self.step = int(meta['step'])
        # Checkpoints written before the history was kept have none.
        self.losses = [float(v) for v in meta.get('losses', [])]
        return True

    def train(self, steps: int, seed: int, log_every: int, checkpoint_every: int,
              progress: bool = True,
              log: Callable[[str], None] | None = None) -> list[float]:
        """Run until ``steps`` gradient steps in total; returns the losses logged since step 0.

        ``log`` gets one line per ``log_every`` steps (step, mean loss, seconds per step): the
        record a run without a progress bar leaves in its log file.
        """
        # Each rank and each resume point draws its own batches.
        rng = np.random.default_rng([seed, self.context.rank, self.step])
        torch.manual_seed(seed * 1009 + self.context.rank * 7919 + self.step)
        self.network.train()
        running = []
        since = time.perf_counter()
        bar = tqdm(total=steps, initial=self.step, desc=f'train {self.name}',
                   disable=not (progress and self.context.is_main))
        while self.step < steps:
            batch = {k: v.to(self.device) for k, v in self.sample_batch(rng).items()}
            loss = self.loss_fn(self.network, batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f'{self.name} loss became {loss.item()} at step {self.step}')
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            running.append(loss.item())
            bar.update(1)
            if self.step % log_every == 0 or self.step == steps:
                self.losses.append(float(np.mean(running)))
                bar.set_postfix(loss=f'{self.losses[-1]:.4f}')
                if log is not None and self.context.is_main:
                    now = time.perf_counter()
                    log(f'{self.name} step {self.step}/{steps}: loss {self.losses[-1]:.4f}, '
                        f'{(now - since) / len(running):.3f} s/step')
                    since = now
                running = []
            if self.step % checkpoint_every == 0 or self.step == steps:
                self.save_checkpoint()
        bar.close()
        self.network.eval()
        return list(self.losses)

    def final_model(self) -> nn.Module:
        """Return the weights to ship: the EMA copy when there is one."""
        return self.ema.model if self.ema is not None else self.model


def parameter_checksum(model: nn.Module) -> float:
    """Sum of all parameters: equal across DDP ranks when they stayed in sync."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))
