#!/usr/bin/env python3
"""Plan latency per stage, eager against the optimized path (ONNX Runtime or CUDA graph).

Usage:
    python training/benchmark_latency.py --bundle models/pointmaze_umaze --device cpu \
        --json docs/results/latency/cpu_umaze.json
    python training/benchmark_latency.py --bundle models/pointmaze_umaze --device cuda

Run it alone on the machine: another process on the same cores inflates every figure.
"""

import argparse
import json
from pathlib import Path

from diffusion_planner_ros.latency import compare_backends, latency_table


def main() -> None:
    """Parse arguments, measure both paths, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bundle', required=True, help='bundle directory')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--optimized', default='auto',
                        choices=('auto', 'onnx', 'cuda_graph', 'eager'),
                        help='the path compared with eager (auto: the planner\'s default)')
    parser.add_argument('--calls', type=int, default=500, help='timed plans per path')
    parser.add_argument('--warmup', type=int, default=50, help='untimed plans first')
    parser.add_argument('--seed', type=int, default=0, help='seed of the observation stream')
    parser.add_argument('--refine-steps', type=int, default=None, help='k (default: bundle)')
    parser.add_argument('--threads', type=int, default=None,
                        help='inference threads (default: the bundle\'s planner config)')
    parser.add_argument('--json', default=None, help='write the report to this file')
    args = parser.parse_args()
    if args.calls < 1 or args.warmup < 0:
        parser.error('--calls must be >= 1 and --warmup >= 0')

    overrides = {key: value for key, value in (('refine_steps', args.refine_steps),
                                               ('threads', args.threads)) if value is not None}
    report = compare_backends(args.bundle, args.device, args.calls, args.warmup, args.seed,
                              args.optimized, **overrides)

    print(f'{report["bundle"]} ({report["method"]}) on {report["device"]}: {report["machine"]}')
    print(f'settings {report["settings"]}, {args.calls} plans after {args.warmup} warm-up')
    print(latency_table(report))
    print(f'whole plan speed-up (p50): {report["speedup_p50"]:.2f}x; optimized plans differ '
          f'from eager by at most {report["max_state_difference"]:.2e} (states), '
          f'{report["max_action_difference"]:.2e} (actions)')
    for reason in report['optimized']['fallbacks']:
        print(f'fallback: {reason}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
