#!/usr/bin/env python3
"""Collect a scripted PointMaze dataset and write it as a local Minari dataset.

Usage:
    python training/collect.py --env umaze --steps 1000000 --seed 0
"""

import argparse

from diffusion_planner_ros.data.collect import CollectionConfig, collect_pointmaze

MAZE_DATASETS = {
    'umaze': 'dpr/pointmaze-umaze-v0',
    'medium': 'dpr/pointmaze-medium-v0',
    'large': 'dpr/pointmaze-large-v0',
}


def main() -> None:
    """Parse arguments, collect, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env', default='umaze', help='umaze, medium, large or a gymnasium id')
    parser.add_argument('--dataset-id', default=None, help='Minari id (default per maze)')
    parser.add_argument('--steps', type=int, default=1_000_000)
    parser.add_argument('--episode-steps', type=int, default=1000)
    parser.add_argument('--action-noise', type=float, default=0.3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    # Config.
    dataset_id = args.dataset_id or MAZE_DATASETS.get(args.env)
    if dataset_id is None:
        parser.error(f'--dataset-id is needed for env {args.env!r}')
    config = CollectionConfig(env_id=args.env, dataset_id=dataset_id, total_steps=args.steps,
                              episode_steps=args.episode_steps, action_noise=args.action_noise,
                              seed=args.seed)
    # Collect and write.
    dataset = collect_pointmaze(config, progress=not args.no_progress)
    print(f'wrote {dataset.spec.dataset_id}: {dataset.spec.total_episodes} episodes, '
          f'{dataset.spec.total_steps} steps')


if __name__ == '__main__':
    main()
