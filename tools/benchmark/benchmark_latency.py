#!/usr/bin/env python3
"""Plan latency per stage, eager against the optimized path (ONNX Runtime or CUDA graph).

Usage:
    python tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze --device cpu \
        --json docs/results/latency/cpu_umaze.json
    python tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze --device cuda
    python tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze \
        --versus decision_diffuser=<bundle> --versus diffuser=<bundle> --calls 100
    python tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze \
        --versus k3=models/pointmaze_umaze,refine_steps=3 --calls 100
    python tools/benchmark/benchmark_latency.py --bundle models/pointmaze_umaze \
        --versus decision_diffuser=<bundle> --untrained prior.n_embd=256 unet.dim=64

With --versus the bundles plan in turn, one call each, on each of --paths (default eager and
auto), and the table gives each one's plan time over --bundle's measured in the same run.
NAME=BUNDLE,key=value,... sets planner options for that entry only.

--untrained times every bundle rebuilt with freshly initialised networks of other sizes
(planning.bundle.untrained_bundle, in a temporary folder): what a plan would cost with those
networks, before training them. A plan's cost does not depend on the weights' values.

Run it alone on the machine: another process on the same cores inflates every figure.
"""

import argparse
import json
import tempfile
from pathlib import Path

from diffusion_planner_ros.evaluation import machine
from diffusion_planner_ros.planning.bundle import untrained_bundle
from latency import compare_backends, interleave, latency_table


def versus_table(report: dict) -> str:
    """Markdown table of an interleaved run: plan time per method and path, and the ratio."""
    lines = ['| path | method | backend | total p50 ms | total p99 ms | p50 over first |'
             ' per-call ratio (median) |', '|---|---|---|---|---|---|---|']
    for path, run in report['paths'].items():
        names = [name for name in run if name != 'ratios']
        for name in names:
            total = run[name]['stages_ms']['total']
            ratio = run['ratios'].get(f'{name}/{names[0]}', {'p50': 1.0, 'median_per_call': 1.0})
            lines.append(f'| {path} | {name} | {run[name]["backend"]} | {total["p50"]:.2f} | '
                         f'{total["p99"]:.2f} | {ratio["p50"]:.2f} | '
                         f'{ratio["median_per_call"]:.2f} |')
    return '\n'.join(lines)


def parse_versus(parser: argparse.ArgumentParser,
                 items: list[str]) -> tuple[dict[str, str], dict[str, dict]]:
    """NAME=BUNDLE[,key=value...] items -> ({name: bundle}, {name: planner options})."""
    bundles, settings = {}, {}
    for item in items:
        name, sep, rest = item.partition('=')
        path, *options = rest.split(',')
        if not sep or not name or not path:
            parser.error(f'--versus wants NAME=BUNDLE[,key=value...], got {item!r}')
        if name in bundles or name == 'ratios':
            parser.error(f'--versus name {name!r} used twice or reserved')
        if not Path(path).is_dir():
            parser.error(f'--versus {name}: no bundle directory at {path}')
        bundles[name], settings[name] = path, {}
        for option in options:
            key, sep, text = option.partition('=')
            if not sep or not key:
                parser.error(f'--versus {name}: option {option!r} is not key=value')
            try:
                settings[name][key] = json.loads(text)
            except json.JSONDecodeError:
                parser.error(f'--versus {name}: {key}={text!r} is not a number or true/false')
    return bundles, settings


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
    parser.add_argument('--versus', action='append', default=[], metavar='NAME=BUNDLE',
                        help='plan this bundle in turn with --bundle (repeatable)')
    parser.add_argument('--paths', nargs='+', default=['eager', 'auto'],
                        choices=('auto', 'onnx', 'cuda_graph', 'eager'),
                        help='with --versus: the backends to compare on')
    parser.add_argument('--name', default='trajectory_diffuser',
                        help='with --versus: the name of --bundle in the table')
    parser.add_argument('--untrained', nargs='+', default=[], metavar='SECTION.KEY=VALUE',
                        help='time untrained networks of these sizes instead of the bundles\' '
                             '(say prior.n_embd=256 unet.dim=64)')
    parser.add_argument('--json', default=None, help='write the report to this file')
    args = parser.parse_args()
    if args.calls < 1 or args.warmup < 0:
        parser.error('--calls must be >= 1 and --warmup >= 0')
    with tempfile.TemporaryDirectory(prefix='untrained_') as scratch:
        measure(parser, args, Path(scratch))


def resized(parser: argparse.ArgumentParser, path: str, sizes: list[str], scratch: Path,
            name: str) -> str:
    """Return the bundle, or an untrained copy of it with ``sizes`` written under scratch."""
    if not sizes:
        return path
    try:
        return str(untrained_bundle(path, sizes, scratch / name))
    except ValueError as error:
        parser.error(f'--untrained: {error}')


def measure(parser: argparse.ArgumentParser, args: argparse.Namespace, scratch: Path) -> None:
    """Time the bundle (against --versus, if given), print the table and write the JSON."""
    if args.versus and args.refine_steps is not None:
        parser.error('--refine-steps applies to one bundle; not with --versus')
    sources, settings = parse_versus(parser, args.versus)
    sources = {args.name: args.bundle, **sources}
    bundles = {name: resized(parser, path, args.untrained, scratch, f'bundle_{index}')
               for index, (name, path) in enumerate(sources.items())}
    if args.untrained:
        print(f'untrained networks resized by {" ".join(args.untrained)}')
    if args.versus:
        report = {'machine': machine(), 'device': args.device, 'calls': args.calls,
                  'warmup': args.warmup, 'seed': args.seed, 'untrained': args.untrained,
                  'paths': {path: interleave(bundles, args.device, path, args.calls,
                                             args.warmup, args.seed, args.threads, settings)
                            for path in args.paths}}
        for run in report['paths'].values():
            for name, source in sources.items():
                run[name]['bundle'] = source
        print(f'{report["machine"]}; {args.calls} plans per bundle and path after '
              f'{args.warmup} warm-up, interleaved')
        print(versus_table(report))
        write_json(report, args.json)
        return

    overrides = {key: value for key, value in (('refine_steps', args.refine_steps),
                                               ('threads', args.threads)) if value is not None}
    report = compare_backends(bundles[args.name], args.device, args.calls, args.warmup,
                              args.seed, args.optimized, **overrides)
    report.update(bundle=args.bundle, untrained=args.untrained)

    print(f'{report["bundle"]} ({report["method"]}) on {report["device"]}: {report["machine"]}')
    print(f'settings {report["settings"]}, {args.calls} plans after {args.warmup} warm-up')
    print(latency_table(report))
    print(f'whole plan speed-up (p50): {report["speedup_p50"]:.2f}x; optimized plans differ '
          f'from eager by at most {report["max_state_difference"]:.2e} (states), '
          f'{report["max_action_difference"]:.2e} (actions)')
    for reason in report['optimized']['fallbacks']:
        print(f'fallback: {reason}')
    write_json(report, args.json)


def write_json(report: dict, path: str | None) -> None:
    """Write the report when a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + '\n')
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
