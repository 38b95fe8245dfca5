#!/usr/bin/env python3
"""How well a bundle's transition model predicts the states a late command acts on.

Usage:
    python training/check_transition.py --bundle models/hopper --seed 778 --steps 300

Runs one episode of the bundle's own planner (lockstep, paced returns target) and, from every
state after the first 10, predicts 1, 2 and 3 steps ahead through the commands that were
actually applied. Reports the mean absolute error in normalised units (the state range mapped
to [-1, 1]) next to the error of taking the state as it came (no prediction).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.evaluation import episode_returns
from diffusion_planner_ros.planning import load_planner


def main() -> None:
    """Parse arguments, roll the episode out, print and save the errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bundle', required=True)
    parser.add_argument('--seed', type=int, default=778)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--ahead', type=int, nargs='+', default=[1, 2, 3])
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    planner = load_planner(args.bundle)
    if not planner.can_predict:
        parser.error(f'{args.bundle} has no transition model (method.transition_model)')
    env = make_env(planner.bundle.env_id)
    observation, _ = env.reset(seed=args.seed)
    planner.reset()
    returns = episode_returns(planner, None, 'paced')
    states, actions = [observation], []
    for step in range(args.steps):
        action = planner.plan(observation, returns_to_go=returns.at(step)).action
        observation, _, terminated, truncated, _ = env.step(action.astype(np.float32))
        states.append(observation)
        actions.append(action)
        if terminated or truncated:
            break
    env.close()
    states, actions = np.array(states), np.array(actions)
    scale = planner.bundle.normalizers['states']
    rows = []
    for ahead in args.ahead:
        starts = range(10, len(actions) - ahead + 1)
        predicted = [scale.normalize(planner.predict_state(states[t], actions[t:t + ahead]))
                     for t in starts]
        actual = [scale.normalize(states[t + ahead]) for t in starts]
        held = [scale.normalize(states[t]) for t in starts]
        rows.append({'steps_ahead': ahead,
                     'error_with_model': float(np.abs(np.subtract(predicted, actual)).mean()),
                     'error_without': float(np.abs(np.subtract(held, actual)).mean())})
        print(f'{ahead} steps ahead: error {rows[-1]["error_with_model"]:.4f} with the model, '
              f'{rows[-1]["error_without"]:.4f} without', flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            'bundle': args.bundle, 'seed': args.seed, 'steps': len(actions),
            'rows': rows}, indent=2) + '\n')


if __name__ == '__main__':
    main()
