"""ament-style lint: flake8 at 99 columns and pep257 docstrings (settings in setup.cfg)."""

import subprocess

import pytest

from conftest import PYTHON, REPO

PATHS = ['diffusion_planner_ros', 'training', 'tools', 'test', 'setup.py']


@pytest.mark.linter
def test_flake8():
    result = subprocess.run([PYTHON, '-m', 'flake8', *PATHS], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.linter
def test_pep257():
    result = subprocess.run([PYTHON, '-m', 'pydocstyle', 'diffusion_planner_ros', 'training',
                             'tools/reliability', 'tools/benchmark'],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_library_imports_no_ros():
    offenders = []
    for path in (REPO / 'diffusion_planner_ros').rglob('*.py'):
        if 'nodes' in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(('import rclpy', 'from rclpy')):
                offenders.append(str(path))
    assert not offenders
