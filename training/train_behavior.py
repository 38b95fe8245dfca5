#!/usr/bin/env python3
"""Train a SAC behavior policy and keep it at medium and expert level (D4RL's recipe).

Usage:
    python training/train_behavior.py --env hopper --steps 1000000 --medium-return 1500 \
        --seed 0 --out models/behavior

Writes <out>/<env>-medium and <out>/<env>-expert (actor.safetensors + card.json) and the
medium-replay Minari dataset (dpr/<env>-medium-replay-v0: the replay buffer up to the medium
policy). Ctrl-C or SIGTERM ends the run early and keeps the best policy so far as the
expert. --stop-at-medium stops there, which regenerates medium-replay without the expert's
training. Needs the data extra: pip install 'diffusion_planner_ros[data]'.
"""

import argparse
import json
import logging
import signal
import sys

import torch

from diffusion_planner_ros.data.behavior import locomotion_dataset_id
from diffusion_planner_ros.data.sac import BehaviorTrainingConfig, train_behavior


def main() -> None:
    """Parse arguments, train, report what was kept."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env', required=True, help='hopper, walker2d or a gymnasium id')
    parser.add_argument('--steps', type=int, default=1_000_000, help='SAC environment steps')
    parser.add_argument('--medium-return', type=float, required=True,
                        help='keep the first policy whose eval return reaches this as medium')
    parser.add_argument('--eval-every', type=int, default=10_000)
    parser.add_argument('--eval-episodes', type=int, default=10)
    parser.add_argument('--learning-starts', type=int, default=10_000)
    parser.add_argument('--replay-dataset-id', default=None,
                        help="medium-replay id (default dpr/<env>-medium-replay-v0; '' skips)")
    parser.add_argument('--stop-at-medium', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='models/behavior')
    parser.add_argument('--progress', action='store_true')
    args = parser.parse_args()

    # Config.
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    torch.set_num_threads(1)  # small networks; one thread is also what makes a run repeatable
    replay = (locomotion_dataset_id(args.env, 'medium-replay') if args.replay_dataset_id is None
              else args.replay_dataset_id)
    try:
        config = BehaviorTrainingConfig(
            env_id=args.env, total_steps=args.steps, medium_return=args.medium_return,
            eval_every=args.eval_every, eval_episodes=args.eval_episodes,
            learning_starts=args.learning_starts, replay_dataset_id=replay,
            stop_at_medium=args.stop_at_medium, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    # Train and keep. SIGTERM stops early like Ctrl-C: the best policy so far is kept as expert.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary = train_behavior(config, args.out, command=' '.join(['python', *sys.argv]),
                             progress=args.progress)
    print(json.dumps(summary, indent=2))
    if summary['medium'] is None:
        print(f'no evaluation reached --medium-return {args.medium_return}: no medium policy')


if __name__ == '__main__':
    main()
