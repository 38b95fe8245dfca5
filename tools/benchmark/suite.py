"""The seed-systems benchmark: one suite YAML -> trained bundles, evaluations, table, plots.

A suite names datasets (each with its experiment config and the command data that makes the
dataset if it is missing), training seeds and methods. A method either trains (its config
overrides in ``set``), reuses another method's bundle with different planner settings
(``bundle_of``), or derives its bundle from another's networks (``derive_from``: Decision
Diffuser from Trajectory Diffuser), training the networks named in ``train`` on top (a
critic). Entries sharing a ``curve`` are one method at several step counts, drawn as one line
of the score-vs-latency plot. Every run writes one JSON; the table and plots are made from all
JSON files of the results folder, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from diffusion_planner_ros.config import METHODS, load_config, with_overrides
from diffusion_planner_ros.data.behavior import make_locomotion_dataset
from diffusion_planner_ros.data.collect import CollectionConfig, collect_pointmaze
from diffusion_planner_ros.data.minari_io import local_dataset_exists
from diffusion_planner_ros.envs import is_goal_env
from diffusion_planner_ros.evaluation import (evaluate, machine, method_label, planner_settings,
                                              run_planner_episode, summarize)
from diffusion_planner_ros.pipeline import train_method
from diffusion_planner_ros.planning import SamplingDiverged, load_planner
from diffusion_planner_ros.planning.bundle import derive_bundle, load_bundle

REFERENCE_METHOD = 'decision_diffuser'


@dataclass
class MethodEntry:
    """How a suite obtains one method's bundle and which planner settings it runs with."""

    name: str
    method: str = ''               # the bundle's method (default: the entry's name)
    set: list = field(default_factory=list)
    planner: dict = field(default_factory=dict)
    bundle_of: str = ''
    derive_from: str = ''
    train: list = field(default_factory=list)  # with derive_from: networks trained on top
    # The entry its speed-up and paired score are against (default: REFERENCE_METHOD), e.g.
    # the Decision Diffuser on the same U-Net.
    versus: str = ''
    # Entries of one curve are one method at several step counts: the score-vs-latency plot
    # joins them with a line, each point labelled with its steps.
    curve: str = ''


@dataclass
class Suite:
    """A parsed and checked suite YAML."""

    name: str
    episodes: int
    eval_seed: int
    train_seeds: list
    datasets: dict
    methods: dict
    common_set: list = field(default_factory=list)
    shipped: dict = field(default_factory=dict)
    max_episode_steps: int | None = None

    def references(self) -> dict:
        """Each method's reference entry (speed-up and paired score), by method name."""
        return {name: entry.versus or REFERENCE_METHOD for name, entry in self.methods.items()}

    def train_overrides(self, dataset: str, name: str, seed: int) -> list[str]:
        """Return the config overrides of a run that trains networks on a dataset.

        The dataset's own overrides for the method (e.g. longer training on a larger maze) come
        after the method's, so they win; a derived entry has none (load_suite refuses them).
        """
        entry = self.methods[name]
        dataset_set = (self.datasets[dataset].get('set') or {}).get(name, [])
        return [*self.common_set, *entry.set, *dataset_set, f'method.name={entry.method}',
                f'training.seed={seed}']


def check_run_configs(suite: Suite, path: Path) -> None:
    """Build every training run's config once, so a bad override fails before any training.

    A derived entry's overrides apply to its source bundle's config; they are checked against
    the dataset's config, which has the same sections and types.
    """
    for dataset, spec in suite.datasets.items():
        for entry in suite.methods.values():
            if entry.bundle_of or (entry.derive_from and not entry.set):
                continue
            overrides = suite.train_overrides(dataset, entry.name, suite.train_seeds[0])
            try:
                load_config(spec['config'], overrides)
            except ValueError as error:
                raise ValueError(f'{path}: method {entry.name!r} on dataset {dataset!r}: '
                                 f'{error}') from None


def load_suite(path: str | Path) -> Suite:
    """Read a suite YAML; every error names the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'suite file {path} does not exist')
    raw = yaml.safe_load(path.read_text()) or {}
    known = {'episodes', 'eval_seed', 'train_seeds', 'datasets', 'methods', 'common_set',
             'shipped', 'max_episode_steps'}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f'{path}: unknown key(s) {unknown}')
    methods = {}
    for name, entry in (raw.get('methods') or {}).items():
        entry = dict(entry or {})
        bad = sorted(set(entry) - {'method', 'set', 'planner', 'bundle_of', 'derive_from',
                                   'train', 'versus', 'curve'})
        if bad:
            raise ValueError(f'{path}: method {name!r} has unknown key(s) {bad}')
        methods[name] = MethodEntry(name=name, **entry)
    for entry in methods.values():
        if entry.train and not entry.derive_from:
            raise ValueError(f'{path}: method {entry.name!r} trains {entry.train} on top of a '
                             'bundle: it needs derive_from')
        if entry.versus and entry.versus not in methods:
            raise ValueError(f'{path}: method {entry.name!r} is compared against unknown '
                             f'{entry.versus!r}')
        source = entry.bundle_of or entry.derive_from
        if source and source not in methods:
            raise ValueError(f'{path}: method {entry.name!r} refers to unknown {source!r}')
        if not source:
            entry.method = entry.method or entry.name
            if entry.method not in METHODS:
                raise ValueError(f'{path}: method {entry.name!r} trains {entry.method!r}, not '
                                 f'one of {METHODS}')
        if entry.derive_from:
            entry.method = entry.method or entry.name
            if entry.method not in METHODS:
                raise ValueError(f'{path}: method {entry.name!r} derives {entry.method!r}, not '
                                 f'one of {METHODS}')
    for dataset, spec in (raw.get('datasets') or {}).items():
        bad = sorted(set(spec or {}) - {'config', 'collect', 'set'})
        if bad or 'config' not in (spec or {}):
            raise ValueError(f'{path}: dataset {dataset!r} needs a config and takes only '
                             f'config, collect and set (got {sorted(spec or {})})')
        for name in spec.get('set') or {}:
            if name not in methods or methods[name].bundle_of or methods[name].derive_from:
                raise ValueError(f'{path}: dataset {dataset!r} sets {name!r}, which is not a '
                                 f'method that trains')
    suite = Suite(name=path.stem, episodes=int(raw.get('episodes', 20)),
                  eval_seed=int(raw.get('eval_seed', 1000)),
                  train_seeds=list(raw.get('train_seeds', [0])),
                  datasets=dict(raw.get('datasets') or {}), methods=methods,
                  common_set=list(raw.get('common_set') or []),
                  shipped=dict(raw.get('shipped') or {}),
                  max_episode_steps=raw.get('max_episode_steps'))
    if suite.episodes < 1 or not suite.train_seeds or not suite.datasets or not methods:
        raise ValueError(f'{path}: a suite needs episodes >= 1, train_seeds, datasets, methods')
    check_run_configs(suite, path)
    return suite


def ensure_dataset(spec: dict, dataset_id: str, progress: bool) -> None:
    """Collect the suite's dataset when it is not there yet (same command and seed each time)."""
    if local_dataset_exists(dataset_id):
        return
    collect = dict(spec.get('collect') or {})
    if not collect:
        raise ValueError(f'dataset {dataset_id!r} is missing and the suite gives no collect entry')
    if 'kind' in collect:
        # Locomotion: rolled out from kept behavior policies (training/make_locomotion_dataset.py).
        make_locomotion_dataset(
            collect['env'], collect['kind'], int(collect['steps']), int(collect.get('seed', 0)),
            collect.get('policies', 'models/behavior'), collect.get('dataset_id', dataset_id),
            progress=progress)
        return
    collect_pointmaze(CollectionConfig(
        env_id=collect['env'], dataset_id=collect.get('dataset_id', dataset_id),
        total_steps=int(collect['steps']), seed=int(collect.get('seed', 0))), progress=progress)


class SuiteRunner:
    """Obtains bundles (train, reuse or derive) and evaluates each method on each dataset."""

    def __init__(self, suite: Suite, out: str | Path, progress: bool = True):
        self.suite, self.out, self.progress = suite, Path(out), progress

    def run_dir(self, dataset: str, name: str, seed: int) -> Path:
        """Where one method's training run for one dataset and seed lives."""
        return self.out / 'runs' / dataset / name / f'seed{seed}'

    def result_path(self, dataset: str, name: str, seed: int) -> Path:
        """Return the JSON path of one evaluation."""
        return self.out / 'results' / f'{dataset}_{name}_seed{seed}.json'

    def bundle(self, dataset: str, name: str, seed: int) -> Path:
        """Return the bundle of a method, training or deriving it first if needed."""
        entry = self.suite.methods[name]
        if entry.bundle_of:
            return self.bundle(dataset, entry.bundle_of, seed)
        shipped = (self.suite.shipped.get(dataset) or {}).get(name)
        if shipped and seed == 0:
            return Path(shipped)
        bundle_dir = self.run_dir(dataset, name, seed) / 'bundle'
        if (bundle_dir / 'config.json').is_file():
            return bundle_dir
        spec = self.suite.datasets[dataset]
        if entry.derive_from:
            source = self.bundle(dataset, entry.derive_from, seed)
            if not entry.train:
                return derive_bundle(source, entry.method, bundle_dir)
            # The source's networks and config, the entry's networks trained on top.
            start = load_bundle(source)
            config = with_overrides(start.config,
                                    self.suite.train_overrides(dataset, name, seed))
            return self._train(config, spec, (dataset, name, seed), entry.train, start)
        config = load_config(spec['config'], self.suite.train_overrides(dataset, name, seed))
        return self._train(config, spec, (dataset, name, seed))

    def _train(self, config, spec: dict, run: tuple, only: list | None = None,
               start_from=None) -> Path:
        """Train a run's networks (``only`` those, the rest from ``start_from``); its bundle."""
        ensure_dataset(spec, config.data.dataset_id, self.progress)
        dataset, name, seed = run
        run_dir = self.run_dir(dataset, name, seed)
        written = train_method(config, run_dir, run_dir / 'bundle', only, self.progress,
                               start_from)
        if written is None:
            raise RuntimeError(f'training {name} on {dataset} (seed {seed}) wrote no bundle')
        return written

    def evaluate(self, dataset: str, name: str, seed: int) -> dict:
        """Evaluate one method (or load its JSON if this run was done before)."""
        path = self.result_path(dataset, name, seed)
        if path.is_file():
            return json.loads(path.read_text())
        entry = self.suite.methods[name]
        bundle = self.bundle(dataset, name, seed)
        planner = load_planner(bundle, **entry.planner)
        # Reference returns belong to the dataset's protocol, not to the weights: the suite's
        # config file holds them (a bundle trained before they were measured still scores right).
        evaluation = load_config(self.suite.datasets[dataset]['config']).evaluation
        try:
            results = evaluate(planner.bundle.env_id, self.suite.episodes, self.suite.eval_seed,
                               planner=planner, progress=self.progress,
                               max_episode_steps=self.suite.max_episode_steps)
            outcome = summarize(results, evaluation.random_return, evaluation.reference_return)
        except SamplingDiverged as error:
            # A method whose sampler blows up is a result too: kept, tabulated as failed, and
            # the suite goes on (delete the JSON to try again).
            outcome = {'failed': str(error)}
        row = {
            'suite': self.suite.name,
            'dataset_name': dataset,
            'name': name,
            'env': planner.bundle.env_id,
            'dataset': planner.bundle.dataset_id,
            'method': method_label(planner),
            'bundle': str(bundle),
            'train_seed': seed,
            'seed': self.suite.eval_seed,
            'diffusion_levels': planner.levels,
            **planner_settings(planner),
            **outcome,
            'random_return': evaluation.random_return,
            'reference_return': evaluation.reference_return,
            'machine': machine(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2) + '\n')
        return row

    def run(self, datasets: list[str] | None = None, methods: list[str] | None = None,
            seeds: list[int] | None = None) -> list[dict]:
        """Every (dataset, seed, method) asked for; returns the rows."""
        rows = []
        for dataset in datasets or list(self.suite.datasets):
            if dataset not in self.suite.datasets:
                raise ValueError(f'suite {self.suite.name} has no dataset {dataset!r}')
            for seed in seeds if seeds is not None else self.suite.train_seeds:
                for name in methods or list(self.suite.methods):
                    if name not in self.suite.methods:
                        raise ValueError(f'suite {self.suite.name} has no method {name!r}')
                    rows.append(self.evaluate(dataset, name, seed))
                    row = rows[-1]
                    if self.progress and 'failed' in row:
                        print(f'{dataset} {name} seed {seed}: failed: {row["failed"]}')
                    elif self.progress:
                        print(f'{dataset} {name} seed {seed}: score '
                              f'{row["score_mean"]:.1f} +- {row["score_stderr"]:.1f}, '
                              f'plan p50 {row["plan_ms_p50"]:.1f} ms')
        return rows


def paired_difference(rows: list[dict], reference_rows: list[dict]) -> dict | None:
    """Score of ``rows`` minus the reference's, episode by episode (same train seed, env seed).

    Both methods meet the same start and goal in each pair, so the spread of the maze's
    episodes cancels: mean +- stderr of the differences, and the number of pairs.
    """
    by_seed = {r['train_seed']: r for r in reference_rows if 'failed' not in r}
    differences = []
    for row in rows:
        reference = by_seed.get(row['train_seed'])
        if ('failed' in row or reference is None or reference.get('seed') != row.get('seed')
                or len(reference['episode_returns']) != len(row['episode_returns'])):
            continue
        scale = 100.0 / (row['reference_return'] - row['random_return'])
        differences.extend(scale * (np.array(row['episode_returns'])
                                    - np.array(reference['episode_returns'])))
    if len(differences) < 2:
        return None
    differences = np.array(differences)
    return {'mean': float(differences.mean()), 'pairs': len(differences),
            'stderr': float(differences.std(ddof=1) / np.sqrt(len(differences)))}


def aggregate(rows: list[dict], references: dict | None = None) -> list[dict]:
    """One line per (dataset, method name): pooled over train seeds and episodes.

    Each line is compared with its reference (``references[name]``, default
    REFERENCE_METHOD) on the same dataset: plan speed-up and paired score difference.
    """
    lines = []
    groups: dict[tuple, list] = {}  # (dataset, method name) -> its rows
    for r in rows:
        groups.setdefault((r['dataset_name'], r['name']), []).append(r)
    for dataset, name in sorted(groups):
        group = groups[dataset, name]
        failed = [r for r in group if 'failed' in r]
        group = [r for r in group if 'failed' not in r]
        if not group:
            lines.append({'dataset': dataset, 'name': name, 'method': failed[0]['method'],
                          'backend': failed[0].get('backend') or 'eager',
                          'train_seeds': 0, 'failed_seeds': len(failed),
                          'failed': failed[0]['failed']})
            continue
        group.sort(key=lambda r: r['train_seed'])
        scale = 100.0 / (group[0]['reference_return'] - group[0]['random_return'])
        returns = np.concatenate([r['episode_returns'] for r in group])
        scores = (returns - group[0]['random_return']) * scale
        seed_means = [float(np.mean((np.array(r['episode_returns']) - r['random_return'])
                                    * scale)) for r in group]
        lines.append({
            'dataset': dataset, 'name': name, 'method': group[0]['method'],
            'env': group[0].get('env', ''),
            # Rows written before the fast paths existed ran eagerly.
            'backend': group[0].get('backend') or 'eager',
            'train_seeds': len(group), 'episodes': len(returns),
            'score_mean': float(scores.mean()),
            'score_stderr': float(scores.std(ddof=1) / np.sqrt(len(scores)))
            if len(scores) > 1 else 0.0,
            'seed_score_std': float(np.std(seed_means, ddof=1)) if len(group) > 1 else None,
            # Each train seed's mean score, and the stderr of their mean: with few seeds and
            # near-deterministic episodes (hopper), the spread between seeds is what matters.
            'seed_scores': dict(zip((r['train_seed'] for r in group), seed_means)),
            'seed_mean_stderr': (float(np.std(seed_means, ddof=1) / np.sqrt(len(group)))
                                 if len(group) > 1 else None),
            'success_rate': float(np.mean(np.concatenate([r['episode_successes']
                                                          for r in group]))),
            'plan_ms_p50': float(np.median([r['plan_ms_p50'] for r in group])),
            'plan_ms_p99': float(np.median([r['plan_ms_p99'] for r in group])),
            'failed_seeds': len(failed),
            # The step counts a plan ran (rows written before sample_steps existed have none).
            'refine_steps': group[0].get('refine_steps'),
            'sample_steps': group[0].get('sample_steps') or 0,
            'diffusion_levels': group[0].get('diffusion_levels'),
        })
    for line in lines:
        line['reference'] = (references or {}).get(line['name'], REFERENCE_METHOD)
        reference = [x for x in lines if x['dataset'] == line['dataset']
                     and x['name'] == line['reference'] and 'failed' not in x]
        line['speedup_vs_reference'] = (reference[0]['plan_ms_p50'] / line['plan_ms_p50']
                                        if reference and line.get('plan_ms_p50') else None)
        line['score_vs_reference'] = None if line['name'] == line['reference'] else (
            paired_difference(groups[line['dataset'], line['name']],
                              groups.get((line['dataset'], line['reference']), [])))
    return lines


def markdown_table(lines: list[dict]) -> str:
    """Score +- stderr, success, latency, and speed and paired score against the reference."""
    out = ['| dataset | method | backend | train seeds x episodes | score | success | '
           'plan p50 ms | plan p99 ms | reference | speed-up vs reference | '
           'score - reference, paired (pairs) |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
    for x in lines:
        if 'failed' in x:
            out.append(f'| {x["dataset"]} | {x["name"]} | {x["backend"]} | '
                       f'{x["failed_seeds"]} failed | failed: {x["failed"]} | | | | '
                       f'{x["reference"]} | | |')
            continue
        speed = f'{x["speedup_vs_reference"]:.1f}x' if x['speedup_vs_reference'] else '-'
        paired = x['score_vs_reference']
        paired = (f'{paired["mean"]:+.1f} +- {paired["stderr"]:.1f} ({paired["pairs"]})'
                  if paired else '-')
        failed = f' (+{x["failed_seeds"]} failed)' if x.get('failed_seeds') else ''
        # Only the mazes report success; a locomotion env has none to report.
        reports_success = not x.get('env') or is_goal_env(x['env'])
        success = f'{x["success_rate"]:.2f}' if reports_success else '-'
        out.append(f'| {x["dataset"]} | {x["name"]} | {x["backend"]} | {x["train_seeds"]} x '
                   f'{x["episodes"] // x["train_seeds"]}{failed} | {x["score_mean"]:.1f} +- '
                   f'{x["score_stderr"]:.1f} | {success} | '
                   f'{x["plan_ms_p50"]:.1f} | {x["plan_ms_p99"]:.1f} | {x["reference"]} | '
                   f'{speed} | {paired} |')
    return '\n'.join(out) + '\n'


def seed_table(lines: list[dict]) -> str:
    """Score per train seed and the mean +- stderr over seeds (markdown)."""
    out = ['| dataset | method | train seeds | score per train seed | mean +- stderr over seeds |',
           '|---|---|---|---|---|']
    for x in lines:
        if 'failed' in x:
            continue
        per_seed = ' / '.join(f'{score:.1f}' for score in x['seed_scores'].values())
        seeds = ', '.join(str(seed) for seed in x['seed_scores'])
        spread = (f'{x["score_mean"]:.1f} +- {x["seed_mean_stderr"]:.1f}'
                  if x['seed_mean_stderr'] is not None else '-')
        out.append(f'| {x["dataset"]} | {x["name"]} | {seeds} | {per_seed} | {spread} |')
    return '\n'.join(out) + '\n'


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG (folder created) and free it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def steps_label(line: dict) -> str:
    """Name the step count a line's plans ran: k refinement steps (TD) or K reverse steps."""
    if line['method'] in ('trajectory_diffuser', 'prior_only'):
        return f'k={line["refine_steps"]}'
    return f'K={line["sample_steps"] or line["diffusion_levels"]}'


def plot_score_latency(lines: list[dict], path: str | Path,
                       curves: dict | None = None) -> Path:
    """Score against plan latency (log scale), one panel per dataset.

    A method at several step counts (``curves``: entry name -> curve name) is one line through
    its points, each labelled with its steps; every other entry is one marker.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    curves = curves or {}
    datasets = sorted({x['dataset'] for x in lines})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        shown = [x for x in lines if x['dataset'] == dataset and 'failed' not in x]
        for curve in sorted({curves[x['name']] for x in shown if curves.get(x['name'])}):
            points = sorted((x for x in shown if curves.get(x['name']) == curve),
                            key=lambda x: x['plan_ms_p50'])
            ax.errorbar([x['plan_ms_p50'] for x in points], [x['score_mean'] for x in points],
                        yerr=[x['score_stderr'] for x in points], fmt='o-', capsize=3,
                        label=curve)
            for x in points:
                ax.annotate(steps_label(x), (x['plan_ms_p50'], x['score_mean']),
                            textcoords='offset points', xytext=(5, -10), fontsize=7)
        for x in (x for x in shown if not curves.get(x['name'])):
            ax.errorbar(x['plan_ms_p50'], x['score_mean'], yerr=x['score_stderr'], fmt='o',
                        capsize=3)
            ax.annotate(x['name'], (x['plan_ms_p50'], x['score_mean']),
                        textcoords='offset points', xytext=(5, 5), fontsize=8)
        if any(curves.get(x['name']) for x in shown):
            ax.legend(fontsize=7, loc='best')
        ax.set_xscale('log')
        ax.set_xlabel('plan latency p50 (ms, log scale)')
        ax.set_ylabel('normalised score')
        ax.set_title(dataset)
        ax.grid(True, which='both', alpha=0.3)
    return _save(fig, path)


def plot_example_plan(bundle: str | Path, path: str | Path, seed: int = 1000,
                      steps: int = 120, plan_at: int = 20) -> Path:
    """Draw one Trajectory Diffuser plan beside what was executed: prior, refined, actual.

    A maze bundle is drawn on the maze (x, y); any other env as its first two state dimensions
    against time (hopper: torso height and angle) over the plan's horizon.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from diffusion_planner_ros.envs import make_env
    planner = load_planner(bundle, replan_every=1)
    env = make_env(planner.bundle.env_id, max_episode_steps=max(steps, plan_at + planner.horizon))
    executed, seen = [], {}

    def watch(step, state, goal, plan):
        executed.append(state)
        seen['goal'] = goal
        if step == plan_at:
            seen['plan'] = plan

    run_planner_episode(planner, env, seed, on_step=watch)
    shown, goal = seen.get('plan'), seen['goal']
    executed = np.array(executed)
    refine_label = f'refined plan (k={planner.config.refine_steps})'
    if is_goal_env(planner.bundle.env_id):
        fig, ax = plt.subplots(figsize=(5, 5))
        _draw_maze(ax, env)
        ax.plot(executed[:, 0], executed[:, 1], '-', color='0.5', label='executed path')
        if shown is not None and shown.prior_states is not None:
            ax.plot(shown.prior_states[:, 0], shown.prior_states[:, 1], 'o-', ms=3,
                    color='tab:blue', label=f'prior plan (step {plan_at})')
        if shown is not None:
            ax.plot(shown.refined_states[:, 0], shown.refined_states[:, 1], 'o-', ms=3,
                    color='tab:green', label=refine_label)
        ax.plot(*goal, '*', color='tab:red', ms=14, label='goal')
        ax.legend(fontsize=7, loc='best')
    else:
        fig, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
        for dim, ax in enumerate(axes):
            ax.plot(np.arange(len(executed)), executed[:, dim], '-', color='0.5',
                    label='executed')
            if shown is not None:
                span = plan_at + np.arange(len(shown.refined_states))
                if shown.prior_states is not None:
                    ax.plot(span, shown.prior_states[:, dim], 'o-', ms=3, color='tab:blue',
                            label=f'prior plan (step {plan_at})')
                ax.plot(span, shown.refined_states[:, dim], 'o-', ms=3, color='tab:green',
                        label=refine_label)
            ax.set_ylabel(f'state[{dim}]')
        axes[-1].set_xlabel('env step')
        axes[0].legend(fontsize=7, loc='best')
    env.close()
    return _save(fig, path)


def _draw_maze(ax, env) -> None:
    """Walls of a PointMaze env as grey squares, axes fitted to the maze."""
    import matplotlib.pyplot as plt

    from diffusion_planner_ros.data.maze import MazeGrid
    grid = MazeGrid.from_env(env)
    for row in range(grid.rows):
        for col in range(grid.cols):
            if not grid.free[row, col]:
                x, y = grid.cell_to_xy((row, col))
                half = grid.scaling / 2
                ax.add_patch(plt.Rectangle((x - half, y - half), grid.scaling, grid.scaling,
                                           color='0.3'))
    ax.set_aspect('equal')
    ax.set_xlim(-grid.x_center, grid.x_center)
    ax.set_ylim(-grid.y_center, grid.y_center)


def write_report(out: str | Path, suite: Suite, command: str) -> dict:
    """Table (markdown + JSON) and plots from every result JSON under <out>/results."""
    out = Path(out)
    rows = [json.loads(p.read_text()) for p in sorted((out / 'results').glob('*.json'))]
    lines = aggregate(rows, suite.references())
    header = (f'# Benchmark suite {suite.name}\n\nCommand: `{command}`\n\n'
              f'Machine: {rows[0]["machine"] if rows else machine()}\n\n'
              f'Evaluation: {suite.episodes} episodes per train seed, env seeds '
              f'{suite.eval_seed}..{suite.eval_seed + suite.episodes - 1}.\n\n')
    pooled = ('The score column pools every episode of every train seed; its stderr leaves out '
              'the spread between seeds, which the second table shows. Each method is compared '
              'with its reference on the same dataset: plan p50 speed-up, and the score '
              'difference episode by episode (same train seed, same env seed), mean +- stderr '
              'over the pairs.\n\n')
    (out / 'table.md').write_text(header + pooled + markdown_table(lines)
                                  + '\n## Per train seed\n\n' + seed_table(lines))
    (out / 'table.json').write_text(json.dumps(lines, indent=2) + '\n')
    curves = {name: entry.curve for name, entry in suite.methods.items()}
    plots = {'score_latency': plot_score_latency(lines, out / 'score_vs_latency.png', curves)}
    for dataset in sorted({x['dataset'] for x in lines}):
        # A bundle trained in another checkout (runs/ is not committed) cannot be drawn here.
        td = [r for r in rows if r['dataset_name'] == dataset
              and r['name'] == 'trajectory_diffuser' and Path(r['bundle']).is_dir()]
        if td:
            plots[f'example_{dataset}'] = plot_example_plan(
                td[0]['bundle'], out / f'example_plan_{dataset}.png', suite.eval_seed,
                steps=min(120, suite.max_episode_steps or 120))
    return {'lines': lines, 'plots': plots}
