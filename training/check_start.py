#!/usr/bin/env python3
"""Does the planner fail at the start of an episode or throughout? Both, side by side.

For each of the first --episodes recorded episodes long enough, the planner runs --steps steps
from a reset (env seeds --seed, --seed + 1, ...) and --steps steps from the recorded state at
step --start of that episode (the recorded states before it as its history). Locomotion bundles
(Hopper, Walker2d) only: the env is put into a recorded state.

    python training/check_start.py --bundle models/hopper --start 200 --steps 300
"""

import argparse

import numpy as np

from diffusion_planner_ros.data.minari_io import load_minari
from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.evaluation import run_planner_episode, run_planner_from_data
from diffusion_planner_ros.planning import load_planner


def main() -> None:
    """Parse arguments, run both starts per episode, print a row each and the means."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bundle', required=True)
    parser.add_argument('--episodes', type=int, default=4)
    parser.add_argument('--start', type=int, default=200)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--refine-steps', type=int, default=None)
    parser.add_argument('--seed', type=int, default=1000)
    args = parser.parse_args()

    overrides = {} if args.refine_steps is None else {'refine_steps': args.refine_steps}
    planner = load_planner(args.bundle, **overrides)
    env = make_env(planner.bundle.env_id, max_episode_steps=args.steps)
    recorded = [episode.observations
                for episode in load_minari(planner.bundle.dataset_id).iterate_episodes()
                if len(episode.observations) > args.start + args.steps]
    print('episode | from reset: return, steps | from recorded step '
          f'{args.start}: return, steps')
    rows = []
    for index, observations in enumerate(recorded[:args.episodes]):
        seed = args.seed + index
        reset = run_planner_episode(planner, env, seed)
        midway = run_planner_from_data(planner, env, observations, args.start, seed)
        rows.append((reset.episode_return, reset.steps, midway.episode_return, midway.steps))
        print(f'{index} | {rows[-1][0]:.1f}, {rows[-1][1]} | {rows[-1][2]:.1f}, {rows[-1][3]}')
    means = np.mean(rows, axis=0)
    print(f'mean | {means[0]:.1f}, {means[1]:.0f} | {means[2]:.1f}, {means[3]:.0f}')


if __name__ == '__main__':
    main()
