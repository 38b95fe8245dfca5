#!/usr/bin/env python3
"""Train or load every seed system on every dataset of a suite, evaluate, tabulate and plot.

Usage:
    python tools/benchmark/benchmark.py --suite quick                       # minutes, CI
    python tools/benchmark/benchmark.py --suite full --datasets umaze --seeds 0
    python tools/benchmark/benchmark.py --suite full --report-only

Suites live in tools/benchmark/suites/<name>.yaml (or pass a path). Results go to --out
(default runs/benchmark/<suite>): runs/ (bundles), results/ (one JSON per dataset, method and
train seed), table.md, table.json and PNG plots. Finished runs are loaded, not redone.
"""

import argparse
import shlex
import sys
from pathlib import Path

from suite import SuiteRunner, load_suite, write_report


def main() -> None:
    """Run the suite, then write the table and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', required=True, help='quick, full, or a suite YAML path')
    parser.add_argument('--out', default=None, help='results folder')
    parser.add_argument('--datasets', nargs='+', default=None, help='subset of the datasets')
    parser.add_argument('--methods', nargs='+', default=None, help='subset of the methods')
    parser.add_argument('--seeds', nargs='+', type=int, default=None, help='train seeds')
    parser.add_argument('--report-only', action='store_true',
                        help='only rebuild the table and plots from the result JSON files')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    suite_path = Path(args.suite)
    if not suite_path.suffix:
        suite_path = Path(__file__).parent / 'suites' / f'{args.suite}.yaml'
    suite = load_suite(suite_path)
    out = Path(args.out or Path('runs/benchmark') / suite.name)
    if not args.report_only:
        SuiteRunner(suite, out, progress=not args.no_progress).run(
            args.datasets, args.methods, args.seeds)
    arguments = ' '.join(shlex.quote(a) for a in sys.argv[1:])
    command = f'python tools/benchmark/benchmark.py {arguments}'
    report = write_report(out, suite, command)
    print((out / 'table.md').read_text())
    print('plots: ' + ', '.join(str(p) for p in report['plots'].values()))


if __name__ == '__main__':
    main()
