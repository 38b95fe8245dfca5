"""Suite YAML parsing and the overrides each training run gets (no training here)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

import suite as benchmark
from diffusion_planner_ros.config import load_config
from diffusion_planner_ros.planning.bundle import read_config
from suite import SuiteRunner, load_suite

REPO = Path(__file__).resolve().parents[1]


def write_suite(tmp_path, datasets, methods=None):
    path = tmp_path / 'suite.yaml'
    path.write_text(yaml.safe_dump({
        'episodes': 1, 'train_seeds': [0], 'datasets': datasets,
        'methods': methods or {'trajectory_diffuser': {'set': ['training.prior_steps=7']},
                               'prior_only': {'bundle_of': 'trajectory_diffuser',
                                              'planner': {'refine_steps': 0}}}}))
    return path


def test_dataset_overrides_follow_the_method_overrides(tmp_path, monkeypatch):
    config = str(REPO / 'config' / 'pointmaze_umaze.yaml')
    suite = load_suite(write_suite(tmp_path, {
        'a': {'config': config},
        'b': {'config': config, 'set': {'trajectory_diffuser': ['training.prior_steps=9']}}}))
    seen = {}

    def fake_train(cfg, run_dir, bundle_dir, only, progress, start_from):
        seen[Path(run_dir).parts[-3]] = cfg
        return None

    monkeypatch.setattr(benchmark, 'train_method', fake_train)
    monkeypatch.setattr(benchmark, 'ensure_dataset', lambda *args: None)
    runner = SuiteRunner(suite, tmp_path / 'out', progress=False)
    for dataset in ('a', 'b'):
        with pytest.raises(RuntimeError, match='wrote no bundle'):
            runner.bundle(dataset, 'prior_only', 3)
    assert seen['a'].training.prior_steps == 7 and seen['b'].training.prior_steps == 9
    assert seen['b'].training.seed == 3 and seen['b'].method.name == 'trajectory_diffuser'


@pytest.mark.parametrize('datasets, message', [
    ({'a': {'collect': {}}}, 'needs a config'),
    ({'a': {'config': 'x.yaml', 'steps': 3}}, 'takes only'),
    ({'a': {'config': 'x.yaml', 'set': {'nope': []}}}, "'nope', which is not a method"),
    ({'a': {'config': 'x.yaml', 'set': {'prior_only': []}}}, 'not a method that trains'),
])
def test_bad_dataset_entries_are_named(tmp_path, datasets, message):
    with pytest.raises(ValueError, match=message):
        load_suite(write_suite(tmp_path, datasets))


@pytest.mark.parametrize('methods, message', [
    ({'trajectory_diffuser': {'set': ['unet.dim=0']}},
     "'trajectory_diffuser' on dataset 'a'.*dim"),
    ({'trajectory_diffuser': {'set': ['prior.depth=3']}}, 'depth'),
    ({'trajectory_diffuser': {}, 'dd': {'derive_from': 'trajectory_diffuser',
                                        'method': 'decision_diffuser',
                                        'set': ['planner.refine_steps=-1']}}, "'dd'"),
])
def test_a_bad_override_is_named_when_the_suite_loads(tmp_path, methods, message):
    config = str(REPO / 'config' / 'pointmaze_umaze.yaml')
    datasets = {'a': {'config': config}, 'b': {'config': config}}
    with pytest.raises(ValueError, match=message):
        load_suite(write_suite(tmp_path, datasets, methods))
    # Only on the dataset whose own overrides break it.
    datasets['a']['set'] = {'trajectory_diffuser': ['training.prior_steps=zero']}
    with pytest.raises(ValueError, match="on dataset 'a'.*prior_steps"):
        load_suite(write_suite(tmp_path, datasets))


def test_a_missing_dataset_config_is_named_when_the_suite_loads(tmp_path):
    with pytest.raises(ValueError, match="on dataset 'a'.*nowhere.yaml does not exist"):
        load_suite(write_suite(tmp_path, {'a': {'config': str(tmp_path / 'nowhere.yaml')}}))


def test_a_derived_entry_trains_its_networks_on_top_of_the_source_bundle(tmp_path,
                                                                         monkeypatch):
    from test_bundle_planner import write_bundle
    source = write_bundle(tmp_path / 'shipped')
    path = write_suite(tmp_path, {'a': {'config': str(REPO / 'config' / 'pointmaze_umaze.yaml')}},
                       {'trajectory_diffuser': {},
                        'rerank': {'derive_from': 'trajectory_diffuser',
                                   'method': 'trajectory_diffuser', 'train': ['critic'],
                                   'set': ['method.critic=true', 'training.critic_steps=11'],
                                   'planner': {'candidates': 8}}})
    raw = yaml.safe_load(path.read_text())
    raw['shipped'] = {'a': {'trajectory_diffuser': str(source)}}
    path.write_text(yaml.safe_dump(raw))
    calls = []

    def fake_train(cfg, run_dir, bundle_dir, only, progress, start_from):
        calls.append((cfg, Path(run_dir), only, start_from))
        return None

    monkeypatch.setattr(benchmark, 'train_method', fake_train)
    monkeypatch.setattr(benchmark, 'ensure_dataset', lambda *args: None)
    runner = SuiteRunner(load_suite(path), tmp_path / 'out', progress=False)
    with pytest.raises(RuntimeError, match='training rerank on a .seed 0. wrote no bundle'):
        runner.bundle('a', 'rerank', 0)
    (cfg, run_dir, only, start_from), = calls
    # The source bundle's config (its tiny sizes), the entry's overrides, the source's networks.
    assert cfg.unet.dim == 8 and cfg.method.critic and cfg.training.critic_steps == 11
    assert only == ['critic'] and start_from.path == source
    assert run_dir == tmp_path / 'out' / 'runs' / 'a' / 'rerank' / 'seed0'


@pytest.mark.parametrize('entry, message', [
    ({'train': ['critic']}, 'needs derive_from'),
    ({'derive_from': 'trajectory_diffuser', 'method': 'magic'}, "derives 'magic'"),
])
def test_bad_derived_entries_are_named(tmp_path, entry, message):
    config = str(REPO / 'config' / 'pointmaze_umaze.yaml')
    with pytest.raises(ValueError, match=message):
        load_suite(write_suite(tmp_path, {'a': {'config': config}},
                               {'trajectory_diffuser': {}, 'x': entry}))


def test_committed_suites_parse():
    paths = sorted((REPO / 'tools' / 'benchmark' / 'suites').glob('*.yaml'))
    assert {'quick', 'full', 'walker2d'} <= {path.stem for path in paths}
    for path in paths:
        suite = load_suite(path)
        assert suite.datasets and suite.methods


def test_a_diverging_method_is_tabulated_as_failed_and_the_suite_goes_on(tmp_path, monkeypatch):
    from test_baselines import method_bundle

    monkeypatch.setenv('MINARI_DATASETS_PATH', str(tmp_path / 'datasets'))
    bundle = method_bundle(tmp_path / 'dmemm', 'dmemm')
    config = str(REPO / 'config' / 'pointmaze_umaze.yaml')
    path = tmp_path / 'suite.yaml'
    path.write_text(yaml.safe_dump({
        'episodes': 1, 'train_seeds': [0], 'max_episode_steps': 5,
        'datasets': {'a': {'config': config}}, 'shipped': {'a': {'dmemm': str(bundle)}},
        'methods': {'dmemm': {}, 'dmemm_blowup': {'bundle_of': 'dmemm',
                                                  'planner': {'value_guidance_scale': 1e3}}}}))
    runner = SuiteRunner(load_suite(path), tmp_path / 'out', progress=False)
    rows = runner.run()
    assert 'failed' not in rows[0] and 'value_guidance_scale' in rows[1]['failed']
    # The reference returns are the suite config's, not the (tiny) bundle's defaults.
    assert rows[0]['reference_return'] == load_config(config).evaluation.reference_return != 1.0
    lines = {x['name']: x for x in benchmark.aggregate(rows)}
    assert lines['dmemm_blowup']['failed_seeds'] == 1 and lines['dmemm']['failed_seeds'] == 0
    table = benchmark.markdown_table(list(lines.values()))
    assert '| a | dmemm_blowup | eager | 1 failed | failed: dmemm sampling diverged' in table
    # Kept: a second run reads the failure back instead of sampling again.
    assert runner.evaluate('a', 'dmemm_blowup', 0)['failed'] == rows[1]['failed']


@pytest.mark.slow
def test_example_plan_of_a_locomotion_bundle_is_drawn_against_time(tmp_path, monkeypatch):
    drawn = []
    save = benchmark._save
    monkeypatch.setattr(benchmark, '_save',
                        lambda fig, path: drawn.append(fig) or save(fig, path))
    path = benchmark.plot_example_plan(REPO / 'models' / 'hopper',
                                       tmp_path / 'hopper.png', steps=10, plan_at=2)
    assert path.is_file()
    (figure,) = drawn
    horizon = read_config(REPO / 'models' / 'hopper').data.horizon
    for dim, axis in enumerate(figure.axes):     # torso height, then angle, against env steps
        executed, prior, refined = axis.get_lines()
        # The episode runs at least until the plan's end, so the plan is drawn against it.
        assert len(executed.get_xdata()) == max(10, 2 + horizon)
        # Both plans span the horizon from the step they were made at, and start from the
        # state the robot was in there.
        for plan in (prior, refined):
            assert list(plan.get_xdata()) == list(range(2, 2 + horizon))
            assert plan.get_ydata()[0] == pytest.approx(executed.get_ydata()[2], abs=1e-5)


def test_seed_table_gives_each_train_seed_and_the_stderr_over_seeds():
    def row(seed, returns):
        return {'dataset_name': 'medium', 'name': 'td', 'method': 'trajectory_diffuser',
                'env': 'Hopper-v5', 'backend': 'onnx', 'train_seed': seed,
                'episode_returns': returns, 'episode_successes': [False] * len(returns),
                'random_return': 0.0, 'reference_return': 100.0,
                'plan_ms_p50': 9.0, 'plan_ms_p99': 12.0}

    # Seeds listed out of order; seed 2 scores 30 and 50 (mean 40).
    lines = benchmark.aggregate([row(2, [30.0, 50.0]), row(0, [80.0, 80.0]), row(1, [60.0, 60.0])])
    line = lines[0]
    assert list(line['seed_scores']) == [0, 1, 2]
    assert line['seed_scores'] == {0: 80.0, 1: 60.0, 2: 40.0}
    assert line['seed_mean_stderr'] == pytest.approx(20.0 / np.sqrt(3))
    table = benchmark.seed_table(lines)
    assert '| medium | td | 0, 1, 2 | 80.0 / 60.0 / 40.0 | 60.0 +- 11.5 |' in table
    # Hopper reports no success: the pooled table says so instead of printing 0.00.
    assert '| 3 x 2 | 60.0 +- ' in benchmark.markdown_table(lines)
    assert '| - | 9.0 |' in benchmark.markdown_table(lines)


def test_each_method_is_compared_with_its_reference_episode_by_episode(tmp_path):
    def row(name, seed, returns, plan_ms, eval_seed=1000):
        return {'dataset_name': 'umaze', 'name': name, 'method': 'trajectory_diffuser',
                'backend': 'onnx', 'train_seed': seed, 'seed': eval_seed,
                'episode_returns': returns, 'episode_successes': [True] * len(returns),
                'random_return': 10.0, 'reference_return': 60.0,
                'plan_ms_p50': plan_ms, 'plan_ms_p99': plan_ms}

    rows = [row('dd_big', 0, [60.0, 35.0, 10.0], 200.0), row('dd_big', 1, [60.0, 60.0], 200.0),
            row('td_big', 0, [55.0, 35.0, 20.0], 10.0), row('td_big', 1, [50.0, 60.0], 10.0),
            # Other env seeds than its reference's: no pairs.
            row('td_other', 0, [60.0, 60.0, 60.0], 10.0, eval_seed=5)]
    references = {'td_big': 'dd_big', 'dd_big': 'dd_big', 'td_other': 'dd_big'}
    lines = {x['name']: x for x in benchmark.aggregate(rows, references)}
    td = lines['td_big']
    # Scores are 2 per unit of return here: differences -10, 0, +20, -20, 0.
    differences = np.array([-10.0, 0.0, 20.0, -20.0, 0.0])
    assert td['score_vs_reference']['pairs'] == 5
    assert td['score_vs_reference']['mean'] == pytest.approx(differences.mean())
    assert td['score_vs_reference']['stderr'] == pytest.approx(
        differences.std(ddof=1) / np.sqrt(5))
    assert td['speedup_vs_reference'] == pytest.approx(20.0)
    assert lines['dd_big']['score_vs_reference'] is None
    assert lines['td_other']['score_vs_reference'] is None
    table = benchmark.markdown_table(list(lines.values()))
    assert '| dd_big | 20.0x | -2.0 +- 6.6 (5) |' in table
    # Without a reference named, a method is compared with decision_diffuser (absent here).
    assert benchmark.aggregate(rows)[0]['reference'] == 'decision_diffuser'
    # A suite may name the reference; an unknown one is refused with the file and entry.
    config = str(REPO / 'config' / 'pointmaze_umaze.yaml')
    suite = load_suite(write_suite(tmp_path, {'a': {'config': config}}, {
        'trajectory_diffuser': {}, 'dd': {'derive_from': 'trajectory_diffuser',
                                          'method': 'decision_diffuser'},
        'td2': {'bundle_of': 'trajectory_diffuser', 'versus': 'dd'}}))
    assert suite.references() == {'trajectory_diffuser': 'decision_diffuser', 'dd':
                                  'decision_diffuser', 'td2': 'dd'}
    with pytest.raises(ValueError, match="'td2' is compared against unknown 'ddd'"):
        load_suite(write_suite(tmp_path, {'a': {'config': config}}, {
            'trajectory_diffuser': {}, 'td2': {'bundle_of': 'trajectory_diffuser',
                                               'versus': 'ddd'}}))


def test_a_methods_step_counts_are_one_line_of_the_latency_plot(tmp_path, monkeypatch):
    def line(name, method, plan_ms, score, **steps):
        return {'dataset': 'umaze', 'name': name, 'method': method, 'plan_ms_p50': plan_ms,
                'score_mean': score, 'score_stderr': 1.0, 'refine_steps': 5, 'sample_steps': 0,
                'diffusion_levels': 100, **steps}

    lines = [line('td', 'trajectory_diffuser', 9.0, 93.0),
             line('td_k10', 'trajectory_diffuser', 14.0, 94.0, refine_steps=10),
             line('prior', 'prior_only', 2.0, 85.0, refine_steps=0),
             line('dd', 'decision_diffuser', 100.0, 97.0),
             line('dd_k5', 'decision_diffuser', 6.0, 96.0, sample_steps=5),
             line('bc', 'bc', 0.1, 80.0)]
    drawn = []
    save = benchmark._save
    monkeypatch.setattr(benchmark, '_save', lambda fig, path: drawn.append(fig) or save(fig, path))
    curves = {'td': 'TD', 'td_k10': 'TD', 'prior': 'TD', 'dd': 'DD', 'dd_k5': 'DD'}
    assert benchmark.plot_score_latency(lines, tmp_path / 'plot.png', curves).is_file()
    (axis,) = drawn[0].axes
    # One line per curve, its points in order of plan time, each labelled with its steps.
    joined = {tuple(x.get_xdata()): tuple(x.get_ydata()) for x in axis.get_lines()
              if len(x.get_xdata()) > 1 and x.get_marker() == 'o'}   # not the error bars' caps
    assert joined == {(2.0, 9.0, 14.0): (85.0, 93.0, 94.0), (6.0, 100.0): (96.0, 97.0)}
    labels = {text.get_text() for text in axis.texts}
    assert labels == {'k=0', 'k=5', 'k=10', 'K=5', 'K=100', 'bc'}
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ['DD', 'TD']
    # A suite entry takes a curve; the full suite draws TD and DD at several step counts.
    full = load_suite(REPO / 'tools' / 'benchmark' / 'suites' / 'full.yaml')
    assert {name for name, entry in full.methods.items() if entry.curve == 'trajectory_diffuser'} \
        == {'trajectory_diffuser', 'prior_only', 'trajectory_diffuser_k2',
            'trajectory_diffuser_k10'}
