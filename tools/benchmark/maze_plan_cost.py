#!/usr/bin/env python3
"""What each maze method's planning costs against Trajectory Diffuser's, per plan and per episode.

Usage:
    python tools/benchmark/maze_plan_cost.py                 # prints the table of docs/results.md

Reads the suite's table (docs/results/benchmark_full/table.json: plan p50 pooled over train
seeds) and the maze protocols' evaluations (benchmark_full/<method>/<maze>_seed<k>.json: the
median of their plan p50s, the mean of their plans an episode). Every method but the maze
protocols plans every ``REPLAN_EVERY`` steps of the maze's episode; the maze protocols plan once
per goal and again on drift. Each cell: plan p50, how many of Trajectory Diffuser's plans it
takes, and the planning time of one episode.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

EPISODE_STEPS = {'umaze': 300, 'medium': 600, 'large': 800}    # PointMaze-v3's time limits
REPLAN_EVERY = 4                                               # the suite's maze methods
METHODS = [('decision_diffuser', 'Decision Diffuser (K = 100)'), ('diffuser', 'Diffuser'),
           ('dmemm_no_tr_guide', 'DMEMM w/o tr-guide'),
           ('diffuser_maze', 'Diffuser, maze protocol'),
           ('dmemm_maze', 'DMEMM, maze protocol'), ('prior_only', 'prior only'), ('bc', 'BC')]
PROTOCOLS = ('diffuser_maze', 'dmemm_maze')    # one folder of evaluations each


def protocol_cost(results: Path, method: str, maze: str) -> tuple[float, float] | None:
    """Return (median plan p50 ms, mean plans an episode) over a protocol's train seeds."""
    runs = [json.loads(path.read_text())
            for path in sorted((results / method).glob(f'{maze}_seed*.json'))]
    if not runs:
        return None
    return (statistics.median(run['plan_ms_p50'] for run in runs),
            statistics.mean(run['plans_per_episode'] for run in runs))


def cell(plan_ms: float, plans: float, reference_ms: float) -> str:
    """Format one method's plan p50, its ratio to the reference's and its episode's time."""
    ratio, episode_s = plan_ms / reference_ms, plan_ms * plans / 1e3
    episode_digits = 1 if episode_s >= 0.1 else 2
    return (f'{plan_ms:.{_digits(plan_ms)}f} ms ({ratio:.{_digits(ratio)}f}x); '
            f'{episode_s:.{episode_digits}f} s')


def _digits(value: float) -> int:
    return 0 if value >= 10 else (1 if value >= 1 else 2)


def table(results: Path) -> str:
    """Return the markdown table, one row per maze."""
    suite = {(row['dataset'], row['name']): row
             for row in json.loads((results / 'table.json').read_text())}
    lines = ['| maze | Trajectory Diffuser | ' + ' | '.join(label for _, label in METHODS) + ' |',
             '|---' * (len(METHODS) + 2) + '|']
    for maze, steps in EPISODE_STEPS.items():
        reference = suite[(maze, 'trajectory_diffuser')]['plan_ms_p50']
        plans_every = steps / REPLAN_EVERY
        cells = []
        for method, _ in METHODS:
            if method in PROTOCOLS:
                cost = protocol_cost(results, method, maze)
            else:
                row = suite.get((maze, method))
                cost = None if row is None else (row['plan_ms_p50'], plans_every)
            cells.append('not run' if cost is None else cell(*cost, reference))
        lines.append(f'| {maze} | {reference:.1f} ms; {reference * plans_every / 1e3:.1f} s | '
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--results', default='docs/results/benchmark_full',
                        help='the suite\'s results folder (table.json and one folder per '
                             'maze protocol)')
    print(table(Path(parser.parse_args().results)))


if __name__ == '__main__':
    main()
