#!/usr/bin/env python3
"""DMEMM's Eq. 11 weights of a goal dataset's training windows, by the start's goal distance.

Usage:
    python tools/benchmark/window_weights.py --config config/pointmaze_umaze.yaml \
        --horizon 128 --span-goal-switches

Draws training windows as the trainer does (the config's data section; --horizon and
--span-goal-switches as the maze protocol's overrides, or --set) and prints the mean weight of the
windows whose first state lies in each band of distance to the window's goal. The dense goal
reward is exp(-distance), so the first step's reward gives that distance.
"""

import argparse

import numpy as np

from diffusion_planner_ros.config import load_config
from diffusion_planner_ros.data.sequence import REWARDS
from diffusion_planner_ros.pipeline import training_data

BANDS_M = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, float('inf'))


def main() -> None:
    """Print the weight per distance band."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='YAML experiment config (goal data)')
    parser.add_argument('--horizon', type=int, default=0, help='window length (0: the config\'s)')
    parser.add_argument('--span-goal-switches', action='store_true',
                        help='windows may span the data\'s goal switches')
    parser.add_argument('--windows', type=int, default=4096)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override a config value, e.g. data.dataset_id=...')
    args = parser.parse_args()
    if args.windows < 1:
        parser.error(f'--windows {args.windows} must be >= 1')
    if args.horizon < 0:
        parser.error(f'--horizon {args.horizon} must be >= 0 (0: the config\'s)')
    # --horizon and --span-goal-switches are the maze protocol's overrides, spelled short.
    overrides = [*args.set, *([f'data.horizon={args.horizon}'] if args.horizon else []),
                 *(['data.span_goal_switches=true'] if args.span_goal_switches else [])]
    config = load_config(args.config, overrides)
    if config.data.condition != 'goal':
        parser.error(f'{args.config}: the distance bands need goal data, not '
                     f'{config.data.condition!r}')
    horizon, span = config.data.horizon, config.data.span_goal_switches
    _, data = training_data(config.data)
    batch = data.sample_windows(np.random.default_rng(args.seed), args.windows, horizon,
                                with_actions=True)
    weights = data.reward_weights(batch[REWARDS]).numpy()
    distance = -np.log(batch[REWARDS][:, 0].numpy())
    print(f'{config.data.dataset_id}, horizon {horizon}, {args.windows} windows'
          f'{" spanning goal switches" if span else ""}, mean weight {weights.mean():.3f}')
    print('| start-goal distance (m) | windows | mean weight |')
    print('|---|---|---|')
    for low, high in zip(BANDS_M[:-1], BANDS_M[1:]):
        band = (distance >= low) & (distance < high)
        if band.any():
            print(f'| {low}-{high} | {band.sum()} | {weights[band].mean():.3f} |')


if __name__ == '__main__':
    main()
