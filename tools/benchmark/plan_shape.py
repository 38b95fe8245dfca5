#!/usr/bin/env python3
"""Shape of a maze bundle's first plans: jumps between planned states, walls, goal progress.

Usage:
    python tools/benchmark/plan_shape.py runs/umaze_dmemm_maze/bundle \
        runs/umaze_diffuser_maze/bundle --episodes 20 --seed 2000

For each bundle, resets the maze on env seeds seed .. seed + episodes - 1 and makes the first
plan of each episode (eager; the bundle's planner settings, or --set's, as evaluate.py takes
them), then prints per bundle:
- the mean planned step and the mean of each plan's largest step, in metres;
- plans with a jump: a step longer than --jump-m (the ball moves at most about 0.05 m a step);
- plans through a wall: a planned state in a wall cell, or a step whose segment crosses one;
- the planned distance to the goal at the plan's quarter points (mean over plans).
A plan that jumps away from its start or onto its goal shows what its training taught it; the
tracking controller cannot follow such a step.
"""

import argparse

import numpy as np

from diffusion_planner_ros.config import planner_overrides
from diffusion_planner_ros.data.maze import MazeGrid
from diffusion_planner_ros.envs import is_goal_env, make_env, split_observation
from diffusion_planner_ros.planning import load_planner

SEGMENT_SAMPLES = 16  # points checked along each planned step


def crosses_wall(grid: MazeGrid, start: np.ndarray, end: np.ndarray) -> bool:
    """Say whether the straight segment from start to end leaves the free cells."""
    return not all(grid.is_free(start + f * (end - start))
                   for f in np.linspace(0.0, 1.0, SEGMENT_SAMPLES))


def maze_planner(path: str, overrides: dict):
    """Load the maze bundle at ``path`` as an eager planner; ValueError if it is not one."""
    try:
        planner = load_planner(path, backend='eager', **overrides)
    except (OSError, ValueError) as error:
        raise ValueError(f'{path}: not a bundle ({error})') from error
    if not is_goal_env(planner.bundle.env_id):
        raise ValueError(f'{path}: {planner.bundle.env_id} is not a goal maze')
    return planner


def plan_figures(planner, episodes: int, seed: int, jump_m: float) -> dict:
    """First plans of ``episodes`` episodes of a maze planner: the figures above."""
    env = make_env(planner.bundle.env_id)
    grid = MazeGrid.from_env(env)
    steps, largest, jumps, walls, progress = [], [], [], [], []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        state, goal = split_observation(observation)
        planner.reset()
        xy = planner.plan(state, goal=goal).refined_states[:, :2]
        step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        steps.append(step.mean())
        largest.append(step.max())
        jumps.append(bool(np.any(step > jump_m)))
        walls.append(any(crosses_wall(grid, a, b) for a, b in zip(xy[:-1], xy[1:])))
        quarters = np.linspace(0, len(xy) - 1, 5).round().astype(int)
        progress.append(np.linalg.norm(xy[quarters] - goal, axis=1))
    env.close()
    return {'horizon': len(xy), 'step_m': float(np.mean(steps)),
            'largest_step_m': float(np.mean(largest)), 'jumps': float(np.mean(jumps)),
            'walls': float(np.mean(walls)), 'goal_distance_m': np.mean(progress, axis=0)}


def main() -> None:
    """Print one row per bundle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bundles', nargs='+', help='bundle folders of a goal maze')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=2000)
    parser.add_argument('--jump-m', type=float, default=0.25,
                        help='a planned step longer than this is a jump (metres)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='planner setting for every bundle, as evaluate.py --set '
                             '(e.g. value_guidance_scale=100.0)')
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f'--episodes {args.episodes} must be >= 1')
    if not args.jump_m > 0.0:
        parser.error(f'--jump-m {args.jump_m} must be > 0')
    try:
        overrides = planner_overrides(args.set)
        planners = {path: maze_planner(path, overrides) for path in args.bundles}
    except ValueError as error:
        parser.error(str(error))
    print(f'first plans on env seeds {args.seed}-{args.seed + args.episodes - 1}')
    print('| bundle | H | step (m) | largest step (m) | plans with a jump | plans through a '
          'wall | distance to goal at 0, 1/4, 1/2, 3/4, end (m) |')
    print('|---|---|---|---|---|---|---|')
    for path, planner in planners.items():
        f = plan_figures(planner, args.episodes, args.seed, args.jump_m)
        distances = ', '.join(f'{d:.2f}' for d in f['goal_distance_m'])
        print(f'| {path} | {f["horizon"]} | {f["step_m"]:.3f} | {f["largest_step_m"]:.3f} | '
              f'{f["jumps"]:.2f} | {f["walls"]:.2f} | {distances} |')


if __name__ == '__main__':
    main()
