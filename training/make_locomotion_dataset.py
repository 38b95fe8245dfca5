#!/usr/bin/env python3
"""Write a D4RL-style locomotion dataset from kept behavior policies (or random actions).

Usage:
    python training/make_locomotion_dataset.py --env hopper --kind medium --seed 0
    python training/make_locomotion_dataset.py --env hopper --kind medium-expert --seed 0

Kinds: random (uniform actions), medium, expert (--steps of that policy, actions sampled),
medium-expert (medium with --seed then expert with --seed + 1, --steps each, as D4RL joined its
medium and expert data). Policies are read from <policies>/<env>-<label> (train_behavior.py).
medium-replay comes from train_behavior.py. The id defaults to dpr/<env>-<kind>-v0.
"""

import argparse
import time

from diffusion_planner_ros.data.behavior import (KINDS, BehaviorPolicy, episode_returns,
                                                 locomotion_dataset_id, policy_folder,
                                                 rollout_episodes, write_locomotion_dataset)
from diffusion_planner_ros.data.minari_io import local_dataset_exists, validate_dataset_id
from diffusion_planner_ros.envs import resolve_env_id


def main() -> None:
    """Parse arguments, roll the policies out, write the dataset, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env', required=True, help='hopper, walker2d or a gymnasium id')
    parser.add_argument('--kind', required=True, choices=KINDS)
    parser.add_argument('--steps', type=int, default=1_000_000, help='steps per policy')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--policies', default='models/behavior')
    parser.add_argument('--dataset-id', default=None)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    # Config: the id, and the policies each part needs (all checked before any rollout).
    dataset_id = args.dataset_id or locomotion_dataset_id(args.env, args.kind)
    try:
        validate_dataset_id(dataset_id)
    except ValueError as error:
        parser.error(str(error))
    if local_dataset_exists(dataset_id):
        parser.error(f'dataset {dataset_id} already exists; delete it first')
    if args.steps < 1:
        parser.error('--steps must be >= 1')
    env_id = resolve_env_id(args.env)
    labels = {'random': [None], 'medium': ['medium'], 'expert': ['expert'],
              'medium-expert': ['medium', 'expert']}[args.kind]
    policies = []
    for label in labels:
        folder = policy_folder(args.policies, env_id, label or 'random')
        try:
            policies.append(None if label is None else BehaviorPolicy.load(folder))
        except ValueError as error:
            parser.error(f'{error} (make it with training/train_behavior.py)')
        if label is not None and policies[-1].card.env_id != env_id:
            parser.error(f'{folder} was trained on {policies[-1].card.env_id}, not {env_id}')

    # Roll out and write.
    begin = time.perf_counter()
    episodes = []
    for part, (label, policy) in enumerate(zip(labels, policies)):
        episodes += rollout_episodes(env_id, policy, args.steps, args.seed + part,
                                     progress=not args.no_progress, desc=label or 'random')
    returns = episode_returns(episodes)
    sources = ', '.join(f'{label or "random"} (eval return '
                        f'{policy.card.eval_return:.1f})' if policy else 'random actions'
                        for label, policy in zip(labels, policies))
    write_locomotion_dataset(dataset_id, env_id, episodes, f'SAC-{args.kind}',
                             f'{args.kind} data for {env_id}: {args.steps} steps each of '
                             f'{sources}, seed {args.seed}.')
    steps = sum(len(episode.actions) for episode in episodes)
    print(f'wrote {dataset_id}: {len(episodes)} episodes, {steps} steps, episode return '
          f'{returns.mean():.1f} +- {returns.std():.1f} in {time.perf_counter() - begin:.0f} s')


if __name__ == '__main__':
    main()
