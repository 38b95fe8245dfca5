#!/usr/bin/env python3
"""Fault drill of the sim graph: kill the bridge, restart it, kill the planner; time the rest.

Usage (rclpy wheels or a sourced ROS install; one private domain on localhost):
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST python tools/reliability/fault_drill.py --repeats 5 \
        --json docs/results/reliability/faults.json

Targets: zero command within state_timeout_s of the bridge's death, plans again
within 1 s of the restarted bridge's first state, the bridge applies zero after
command_timeout_s once the planner is dead. The params file sets both timeouts (0.5 s).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from diffusion_planner_ros.share import share_directory
from drills import run_fault_drill

FIGURES = (('bridge_killed', 'zero_after_kill_s'), ('bridge_killed', 'zero_after_last_state_s'),
           ('bridge_restarted', 'resume_after_fresh_state_s'),
           ('planner_killed', 'zero_applied_after_kill_s'),
           ('planner_killed', 'zero_applied_after_last_command_s'),
           ('planner_killed', 'zero_applied_after_last_command_sim_s'),
           ('planner_killed', 'command_applied_after_last_command_s'),
           ('planner_killed', 'states_missing'), ('planner_killed', 'largest_state_gap_s'))


def main() -> None:
    """Run the drill ``--repeats`` times, print the figures and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('launch_args', nargs='*', metavar='name:=value')
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--json', default=None, help='write the drills here')
    args = parser.parse_args()
    overrides = dict(item.split(':=', 1) for item in args.launch_args)

    drills = []
    for repeat in range(args.repeats):
        drill = run_fault_drill(share_directory(), overrides)
        drills.append(drill)
        print(f'drill {repeat + 1}: ' + ', '.join(
            f'{key} {drill[group][key]}' for group, key in FIGURES), flush=True)
    summary = {}
    for group, key in FIGURES:
        values = [d[group][key] for d in drills]
        measured = [v for v in values if v is not None]
        summary[f'{group}.{key}'] = {
            'missing': len(values) - len(measured),
            'max': max(measured) if measured else None,
            'mean': float(np.mean(measured)) if measured else None}
        print(f'{group}.{key}: {summary[f"{group}.{key}"]}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({'summary': summary, 'drills': drills},
                                              indent=2) + '\n')


if __name__ == '__main__':
    main()
