"""Shared fixtures: every test gets its own Minari folder and TMPDIR (maze envs write XML)."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """Point MINARI_DATASETS_PATH and TMPDIR inside the test's temporary folder."""
    datasets = tmp_path / 'datasets'
    scratch = tmp_path / 'tmp'
    datasets.mkdir()
    scratch.mkdir()
    monkeypatch.setenv('MINARI_DATASETS_PATH', str(datasets))
    monkeypatch.setenv('TMPDIR', str(scratch))
    return tmp_path


def script_env(tmp_path) -> dict:
    """Environment for running the training scripts in a subprocess."""
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['MINARI_DATASETS_PATH'] = str(tmp_path / 'datasets')
    env['TMPDIR'] = str(tmp_path / 'tmp')
    return env


PYTHON = sys.executable
