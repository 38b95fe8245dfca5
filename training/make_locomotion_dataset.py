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

from diffusion_planner_ros.data.behavior import KINDS, make_locomotion_dataset


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

    begin = time.perf_counter()
    try:
        made = make_locomotion_dataset(args.env, args.kind, args.steps, args.seed,
                                       args.policies, args.dataset_id or '',
                                       progress=not args.no_progress)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {made['dataset_id']}: {made['episodes']} episodes, {made['steps']} steps, "
          f"episode return {made['return_mean']:.1f} +- {made['return_std']:.1f} in "
          f'{time.perf_counter() - begin:.0f} s')


if __name__ == '__main__':
    main()
