#!/usr/bin/env python3
"""Soak run of the sim graph: lockstep control steps with memory and plan latency recorded.

Usage (alone on the machine; about 10 min for 100k steps here):
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST python tools/reliability/soak.py --steps 100000 \
        --json docs/results/reliability/soak.json

Targets: resident memory of each node grows less than 5% after warm-up (the first
tenth of the steps), and plan latency p99 over the last tenth is within 20% of the first tenth.
"""

import argparse
import json
from pathlib import Path

from diffusion_planner_ros.share import share_directory
from drills import run_soak


def main() -> None:
    """Run the soak, print the figures and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('launch_args', nargs='*', metavar='name:=value')
    parser.add_argument('--steps', type=int, default=100_000, help='lockstep control steps')
    parser.add_argument('--episode-steps', type=int, default=300, help='steps per episode')
    parser.add_argument('--json', default=None, help='write the figures here')
    args = parser.parse_args()
    overrides = dict(item.split(':=', 1) for item in args.launch_args)

    summary = run_soak(share_directory(), overrides, args.steps, args.episode_steps)
    for name, figures in summary['memory'].items():
        print(f'{name}: RSS {figures["rss_after_warm_up_mib"]:.1f} MiB after warm-up, max '
              f'{figures["rss_max_after_mib"]:.1f} MiB after ({100 * figures["growth"]:+.2f}%)')
    latency = summary['plan_latency']
    print(f'plan latency p99: first tenth {latency["first_tenth"]["p99_ms"]:.2f} ms, last tenth '
          f'{latency["last_tenth"]["p99_ms"]:.2f} ms ({100 * latency["p99_change"]:+.1f}%)')
    print(f'{summary["steps"]} steps, {summary["episodes"]} episodes, success rate '
          f'{summary["success_rate"]:.3f}, {summary["duration_s"]:.0f} s')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + '\n')


if __name__ == '__main__':
    main()
