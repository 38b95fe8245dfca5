#!/usr/bin/env python3
"""Evaluate a bundle of any method (or a reference policy) in the gymnasium env, with no ROS.

Usage:
    python training/evaluate.py --bundle models/pointmaze_umaze --episodes 50 --seed 1000
    python training/evaluate.py --bundle models/pointmaze_umaze --refine-steps 0   # prior only
    python training/evaluate.py --bundle runs/diffuser/bundle --warm-start-steps 2
    python training/evaluate.py --bundle runs/dmemm/bundle --set transition_guidance=0.3
    python training/evaluate.py --policy scripted --env umaze --episodes 100 --seed 1000
    python training/evaluate.py --policy models/behavior/hopper-expert --env hopper
"""

import argparse
import json
from pathlib import Path

from diffusion_planner_ros.config import (BACKENDS, EvaluationConfig, load_config,
                                          planner_overrides)
from diffusion_planner_ros.envs import resolve_env_id
from diffusion_planner_ros.evaluation import (evaluate, machine, method_label,
                                              planner_settings, RETURNS, summarize)
from diffusion_planner_ros.planning import load_planner

COLUMNS = ('env', 'method', 'backend', 'refine_steps', 'episodes', 'score_mean', 'score_stderr',
           'success_rate', 'plan_ms_p50', 'plan_ms_p99', 'prior_ms_p50', 'refine_ms_p50')


def print_table(row: dict) -> None:
    """One-row markdown table of the main figures."""
    def fmt(value):
        return f'{value:.3f}' if isinstance(value, float) else str(value)

    print('| ' + ' | '.join(COLUMNS) + ' |')
    print('|' + '---|' * len(COLUMNS))
    print('| ' + ' | '.join(fmt(row.get(c)) for c in COLUMNS) + ' |')


def main() -> None:
    """Parse arguments, run the episodes, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--bundle', help='bundle directory')
    source.add_argument('--policy', help='reference policy: random, scripted, or the folder of a '
                        'behavior policy (training/train_behavior.py)')
    parser.add_argument('--env', default=None, help='env for --policy (umaze, medium, ...)')
    parser.add_argument('--config', default=None,
                        help='YAML whose evaluation section holds the reference returns '
                             '(default: the bundle\'s own)')
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=1000)
    parser.add_argument('--refine-steps', type=int, default=None, help='k; 0 = prior only')
    parser.add_argument('--guidance-scale', type=float, default=None)
    parser.add_argument('--noise-scale', type=float, default=None,
                        help='alpha of Algorithm 1, line 20 (0 = posterior mean only)')
    parser.add_argument('--replan-every', type=int, default=None)
    parser.add_argument('--target-return', type=float, default=None,
                        help='returns-conditioned bundles: the target at the start of an '
                             'episode (it decreases by each reward; default: the bundle\'s)')
    parser.add_argument('--returns', default='rewards', choices=RETURNS,
                        help='returns-conditioned bundles: the target falls by each reward, by '
                             'an even share per step (a robot that reports no rewards), or is '
                             'held')
    parser.add_argument('--value-guidance-scale', type=float, default=None,
                        help='Diffuser/DMEMM: alpha on the objective\'s gradient')
    parser.add_argument('--warm-start-steps', type=int, default=None,
                        help='Diffuser/DMEMM: replan from the previous plan noised this far')
    parser.add_argument('--sample-steps', type=int, default=None,
                        help='Decision Diffuser: reverse steps from noise, strided over the K '
                             'levels (0 = all)')
    parser.add_argument('--candidates', type=int, default=None,
                        help='plans per call, ranked by the method\'s objective')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='any other planner option of the bundle (config planner '
                             'section), value as YAML; repeatable')
    parser.add_argument('--device', default=None, choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--backend', default=None, choices=BACKENDS,
                        help='how the stages run (default auto: the fastest available path)')
    parser.add_argument('--json', default=None, help='write the figures to this file')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error('--episodes must be at least 1')

    # Planner or reference policy.
    planner, evaluation = None, EvaluationConfig()
    if args.bundle:
        overrides = {key: value for key, value in (
            ('refine_steps', args.refine_steps), ('guidance_scale', args.guidance_scale),
            ('noise_scale', args.noise_scale), ('replan_every', args.replan_every),
            ('value_guidance_scale', args.value_guidance_scale),
            ('warm_start_steps', args.warm_start_steps), ('candidates', args.candidates),
            ('sample_steps', args.sample_steps),
            ('target_return', args.target_return), ('device', args.device),
            ('backend', args.backend))
            if value is not None}
        try:
            overrides.update(planner_overrides(args.set))
        except ValueError as error:
            parser.error(f'--set: {error}')
        planner = load_planner(args.bundle, **overrides)
        env_id, evaluation = planner.bundle.env_id, planner.bundle.config.evaluation
        dataset_id, method = planner.bundle.dataset_id, method_label(planner)
    else:
        if not args.env:
            parser.error('--policy needs --env')
        if args.policy not in ('random', 'scripted') and not Path(args.policy).is_dir():
            parser.error(f'--policy {args.policy!r} is not random, scripted or a policy folder')
        env_id, dataset_id, method = resolve_env_id(args.env), '', args.policy
    if args.config:
        evaluation = load_config(args.config).evaluation

    # Episodes.
    results = evaluate(env_id, args.episodes, args.seed, planner=planner,
                       policy_name=args.policy, returns=args.returns,
                       progress=not args.no_progress)
    row = {
        'env': env_id,
        'dataset': dataset_id,
        'method': method,
        'bundle': args.bundle or '',
        **planner_settings(planner),
        'seed': args.seed,
        'returns': args.returns,
        **summarize(results, evaluation.random_return, evaluation.reference_return),
        'random_return': evaluation.random_return,
        'reference_return': evaluation.reference_return,
        'machine': machine(),
    }
    print_table(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + '\n')


if __name__ == '__main__':
    main()
