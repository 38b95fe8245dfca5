"""Suite YAML parsing and the overrides each training run gets (no training here)."""

from pathlib import Path

import pytest
import yaml

from diffusion_planner_ros import benchmark
from diffusion_planner_ros.benchmark import SuiteRunner, load_suite

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

    def fake_train(cfg, run_dir, bundle_dir, progress):
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


def test_committed_suites_parse():
    for name in ('quick', 'full', 'ablations'):
        suite = load_suite(REPO / 'config' / 'benchmark' / f'{name}.yaml')
        assert suite.datasets and suite.methods
