#!/usr/bin/env python3
"""Score against command latency in whole control periods, with no clock (deterministic).

Usage:
    python training/latency_sweep.py --bundle models/hopper --delays 0 1 2 --episodes 10 \
        --seed 778 --returns paced --json docs/results/realtime/hopper_latency_sweep.json

Every plan starts from the state now and takes effect ``delay`` env steps later (the plan
period of a robot whose plans take that many control periods); until then the previous plan's
command holds. Three ways to use a late plan (--late): its first action (what it planned for
the state it started from), its chunk's action for the step under way (the plan's own
prediction of the time between), or tracking: inverse dynamics from the state measured at
each step to the plan's state for that step's end. --lead delay plans from the state the
bundle's transition model predicts for the step the plan takes effect. delay 0 is lockstep
(training/evaluate.py's protocol).
"""

import argparse
import json
from pathlib import Path

from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.evaluation import (LATE_ACTIONS, machine, RETURNS,
                                              run_delayed_episode, summarize)
from diffusion_planner_ros.planning import load_planner


def main() -> None:
    """Parse arguments, run each delay and way, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bundle', required=True)
    parser.add_argument('--delays', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--episodes', type=int, default=10)
    parser.add_argument('--seed', type=int, default=778)
    parser.add_argument('--returns', default='paced', choices=RETURNS)
    parser.add_argument('--refine-steps', type=int, default=None)
    parser.add_argument('--late', nargs='+', choices=LATE_ACTIONS, default=['first', 'chunk'],
                        help='what a plan in force commands at a later step')
    parser.add_argument('--lead', default='0', choices=('0', 'delay'),
                        help="latency-aware: plan from the state predicted 'delay' steps ahead "
                             "(the bundle's transition model through the commands in flight)")
    parser.add_argument('--steps', type=int, default=None, help='env steps per episode')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    if args.episodes < 1 or min(args.delays) < 0:
        parser.error('--episodes must be >= 1 and --delays >= 0')

    # A chunk long enough for the longest delay; the planner still replans every step.
    overrides = {'replan_every': max(args.delays) + 1}
    if args.refine_steps is not None:
        overrides['refine_steps'] = args.refine_steps
    planner = load_planner(args.bundle, **overrides)
    env = make_env(planner.bundle.env_id,
                   **({'max_episode_steps': args.steps} if args.steps else {}))
    evaluation = planner.bundle.config.evaluation
    rows = []
    for delay in args.delays:
        for late in (args.late[:1] if delay == 0 else args.late):
            lead = delay if args.lead == 'delay' else 0
            results = [run_delayed_episode(planner, env, args.seed + episode, delay, late,
                                           args.returns, lead)
                       for episode in range(args.episodes)]
            outcome = summarize(results, evaluation.random_return, evaluation.reference_return)
            rows.append({'delay_steps': delay, 'lead_steps': lead,
                         'late_plan_action': late,
                         **{key: outcome[key] for key in (
                             'score_mean', 'score_stderr', 'episode_returns')},
                         'episode_steps': [r.steps for r in results]})
            print(f'delay {delay}, {rows[-1]["late_plan_action"]} action: score '
                  f'{outcome["score_mean"]:.1f} +- {outcome["score_stderr"]:.1f}', flush=True)
    env.close()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            'bundle': args.bundle, 'seed': args.seed, 'episodes': args.episodes,
            'returns': args.returns, 'refine_steps': planner.config.refine_steps,
            'machine': machine(), 'rows': rows}, indent=2) + '\n')


if __name__ == '__main__':
    main()
