"""Train SAC behavior policies with stable-baselines3 and keep them at medium and expert level.

Needs the ``data`` extra (pip install 'diffusion_planner_ros[data]'). The run evaluates the
stochastic policy every ``eval_every`` steps. The first policy whose mean return reaches
``medium_return`` is kept as 'medium', and the replay buffer collected up to that moment becomes
the medium-replay dataset (D4RL's recipe). The best policy of the run is kept as 'expert'.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_planner_ros.data.behavior import (BehaviorPolicy, PolicyCard, policy_folder,
                                                 replay_episodes, run_episodes,
                                                 write_locomotion_dataset)
from diffusion_planner_ros.data.minari_io import local_dataset_exists, validate_dataset_id
from diffusion_planner_ros.envs import make_env, resolve_env_id

LOG = logging.getLogger(__name__)


@dataclass
class BehaviorTrainingConfig:
    """One SAC run and where its policies and replay dataset go."""

    env_id: str = 'Hopper-v5'
    # Environment steps of SAC.
    total_steps: int = 1_000_000
    # Keep the first policy whose evaluated mean return reaches this as 'medium' (D4RL: about
    # a third to a half of the expert's return).
    medium_return: float = 1500.0
    eval_every: int = 10_000
    eval_episodes: int = 10
    # Uniform random actions before the first update (they are in the replay data too).
    learning_starts: int = 10_000
    # The medium-replay dataset id; '' skips writing it.
    replay_dataset_id: str = ''
    # Stop once medium is kept (regenerates medium-replay without training the expert).
    stop_at_medium: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.env_id = resolve_env_id(self.env_id)
        if self.total_steps < 1 or self.eval_every < 1 or self.eval_episodes < 1:
            raise ValueError('total_steps, eval_every and eval_episodes must be >= 1')
        if not 0 <= self.learning_starts < self.total_steps:
            raise ValueError('learning_starts must be in [0, total_steps)')
        if self.replay_dataset_id:
            validate_dataset_id(self.replay_dataset_id)


def policy_from_sb3(model, config: BehaviorTrainingConfig, label: str, eval_return: float,
                    command: str) -> BehaviorPolicy:
    """Copy the actor of a stable-baselines3 SAC model into a BehaviorPolicy."""
    actor = model.policy.actor
    weights = {name: value.detach().cpu().numpy() for name, value in actor.state_dict().items()
               if name.split('.')[0] in ('latent_pi', 'mu', 'log_std')}
    hidden = [layer.out_features for layer in actor.latent_pi if hasattr(layer, 'out_features')]
    space = model.action_space
    card = PolicyCard(env_id=config.env_id, obs_dim=int(model.observation_space.shape[0]),
                      action_dim=int(space.shape[0]), hidden=hidden,
                      action_low=space.low.tolist(), action_high=space.high.tolist(),
                      label=label, eval_return=float(eval_return),
                      eval_episodes=config.eval_episodes, train_steps=int(model.num_timesteps),
                      seed=config.seed, command=command)
    return BehaviorPolicy(weights, card)


def replay_buffer_episodes(buffer) -> list:
    """Cut the transitions a stable-baselines3 replay buffer holds so far into episodes."""
    if buffer.full:
        raise ValueError('the replay buffer wrapped around; make it as large as the run')
    count = buffer.pos
    return replay_episodes(buffer.observations[:count, 0], buffer.next_observations[:count, 0],
                           buffer.actions[:count, 0], buffer.rewards[:count, 0],
                           buffer.dones[:count, 0], buffer.timeouts[:count, 0])


def train_behavior(config: BehaviorTrainingConfig, out: str | Path, command: str = '',
                   progress: bool = False) -> dict:
    """Train SAC, keep the medium and expert policies under out/<env>-<label>; return a summary.

    An interrupt (KeyboardInterrupt) stops training early; the best policy so far is still kept.
    """
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    folders = {label: policy_folder(out, config.env_id, label) for label in ('medium', 'expert')}
    for folder in folders.values():
        if folder.exists():
            raise ValueError(f'{folder} exists; remove it or choose another --out')
    if config.replay_dataset_id and local_dataset_exists(config.replay_dataset_id):
        raise ValueError(f'dataset {config.replay_dataset_id} already exists; delete it first')
    command = command or ' '.join(sys.argv)
    summary = {'env_id': config.env_id, 'evaluations': [], 'medium': None, 'expert': None}
    best: dict = {'return': -np.inf, 'policy': None}

    class KeepPolicies(BaseCallback):
        """Evaluate every eval_every steps; keep medium once and track the best policy."""

        def _on_step(self) -> bool:
            if self.num_timesteps % config.eval_every:
                return True
            policy = policy_from_sb3(self.model, config, '', 0.0, command)
            returns = run_episodes(config.env_id, policy, config.eval_episodes,
                                   seed=10_000 + config.seed)
            mean = float(np.mean(returns))
            if mean > best['return']:
                best.update({'return': mean, 'policy': policy})
            summary['evaluations'].append({'steps': self.num_timesteps, 'return': mean})
            LOG.info('SAC %s: %d steps, eval return %.1f', config.env_id,
                     self.num_timesteps, mean)
            if summary['medium'] is None and mean >= config.medium_return:
                keep(policy, 'medium', mean)
                if config.replay_dataset_id:
                    episodes = replay_buffer_episodes(self.model.replay_buffer)
                    write_locomotion_dataset(
                        config.replay_dataset_id, config.env_id, episodes, 'SAC-replay',
                        f'The SAC replay buffer up to the medium policy ({self.num_timesteps} '
                        f'steps, eval return {mean:.1f}), seed {config.seed}: {command}')
                    summary['replay_dataset'] = {'id': config.replay_dataset_id,
                                                 'episodes': len(episodes),
                                                 'steps': self.model.replay_buffer.pos}
                return not config.stop_at_medium
            return True

    def keep(policy: BehaviorPolicy, label: str, mean: float) -> None:
        policy.card.label, policy.card.eval_return = label, mean
        policy.save(folders[label])
        summary[label] = {'folder': str(folders[label]), 'return': mean,
                          'steps': policy.card.train_steps}

    torch.manual_seed(config.seed)
    env = make_env(config.env_id)
    model = SAC('MlpPolicy', env, seed=config.seed, buffer_size=config.total_steps,
                learning_starts=config.learning_starts, device='cpu', verbose=0)
    try:
        model.learn(config.total_steps, callback=KeepPolicies(), progress_bar=progress)
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM, which the script turns into one) ends a long run early and still
        # keeps the best policy evaluated so far as the expert.
        LOG.warning('SAC stopped at %d steps; keeping the best policy so far',
                    model.num_timesteps)
        summary['stopped_at'] = int(model.num_timesteps)
    env.close()
    if not config.stop_at_medium and best['policy'] is not None:
        best['policy'].card.stopped_at = summary.get('stopped_at', 0)
        keep(best['policy'], 'expert', best['return'])
    return summary
