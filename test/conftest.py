"""Shared fixtures: every test gets its own Minari folder and TMPDIR (maze envs write XML)."""

import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from diffusion_planner_ros.planning.accelerate import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
# The measurement tools beside the package (tools/benchmark: the suite runner, latency).
sys.path.insert(0, str(REPO / 'tools' / 'benchmark'))


_OWN_CACHE: list[str] = []


def pytest_configure(config):
    """Share exported ONNX models across the run (its planner nodes too), not the user's cache.

    `make test` names a folder for both of its phases; a bare pytest run gets a temporary one.
    xdist workers inherit the controller's, and take one torch thread each: two workers on two
    cores, not four threads.
    """
    if 'PYTEST_XDIST_WORKER' in os.environ:
        os.environ['OMP_NUM_THREADS'] = '1'
        import torch
        torch.set_num_threads(1)
    elif CACHE_ENV not in os.environ:
        _OWN_CACHE.append(tempfile.mkdtemp(prefix='dpr-test-cache-'))
        os.environ[CACHE_ENV] = _OWN_CACHE[0]


def pytest_unconfigure(config):
    """Remove the exported models of a temporary cache."""
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """Point MINARI_DATASETS_PATH and TMPDIR inside the test's temporary folder."""
    datasets = tmp_path / 'datasets'
    scratch = tmp_path / 'tmp'
    datasets.mkdir()
    scratch.mkdir()
    monkeypatch.setenv('MINARI_DATASETS_PATH', str(datasets))
    monkeypatch.setenv('TMPDIR', str(scratch))
    # A process caches its temporary folder at the first use: this one's too.
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
    return tmp_path


def script_env(tmp_path) -> dict:
    """Environment for running the training scripts in a subprocess."""
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['MINARI_DATASETS_PATH'] = str(tmp_path / 'datasets')
    env['TMPDIR'] = str(tmp_path / 'tmp')
    return env


PYTHON = sys.executable


def process_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Wait (bounded) until process ``pid`` has exited (gone, or a zombie not yet reaped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == 'Z':
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


# Each ROS test of a session gets the next domain (from a random start), so no test meets the
# participants of an earlier one (killed nodes linger in discovery for a while). Under
# pytest-xdist each worker cycles through its own share of domains 1-200, so tests running side
# by side never share one.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
_WORKER = int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:])
_DOMAIN_SPAN = 200 // _WORKERS
_DOMAINS = itertools.count(random.randrange(_DOMAIN_SPAN))


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """A private ROS domain on localhost for this test and the processes it starts."""
    domain = str(1 + _WORKER * _DOMAIN_SPAN + next(_DOMAINS) % _DOMAIN_SPAN)
    monkeypatch.setenv('ROS_DOMAIN_ID', domain)
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env = script_env(tmp_path)
    env['ROS_DOMAIN_ID'] = domain
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PATH'] = os.path.dirname(PYTHON) + os.pathsep + env.get('PATH', '')
    return env


@pytest.fixture
def driver(ros_env):
    """A FakeDriver node (ros_helpers) and its executor, in the test's ROS domain."""
    rclpy = pytest.importorskip('rclpy')
    from rclpy.executors import SingleThreadedExecutor
    from ros_helpers import FakeDriver

    rclpy.init()
    node = FakeDriver(seed=1001)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    yield node, executor
    node.destroy_node()
    rclpy.try_shutdown()


# Captured paths (ONNX Runtime, CUDA graphs) against eager ----------------------------------
# Both run the same float32 graph with other kernels (summation order, fused ops, AVX2 or
# AVX-512), so they agree to rounding, which reverse diffusion steps then amplify. The bounds
# are in normalised units ([-1, 1] over the data).
#
# One network call on the same input. Measured here on random inputs, the level baked in as
# the stages capture it: a plain U-Net call differed by up to 5e-6; the guided eps (w = 1.2,
# 1.4 calls' worth, see below) of the test U-Net by up to 1.9e-5 over levels 0-9, the shipped
# U-Nets' by up to 4.9e-6 over levels 0-4.
NETWORK_ATOL = 2e-5
# One reverse step's own arithmetic (x_0, clipping, posterior mean, scaled noise) on |x| <= ~2:
# a few float32 roundings (ulp 2.4e-7 at 2), in whatever order the runtime fuses them.
STEP_ATOL = 1e-6


def reverse_chain_atol(schedule, levels: int, guidance_scale: float = 1.0, start: float = 0.0,
                       network_atol: float = NETWORK_ATOL, step_atol: float = STEP_ATOL) -> float:
    """Bound on how far two backends' x_0 differ after the reverse steps levels - 1 .. 0.

    Each step (DDPMSchedule.step) is mu = c0_t clip(x0) + ct_t x_t with
    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), plus sigma_t z with the same z on both
    paths. Clipping moves two values no further apart and c0_t, ct_t >= 0, so a difference d in
    x_t and e in eps give at most
        d (c0_t / sqrt(abar_t) + ct_t) + e c0_t sqrt(1 - abar_t) / sqrt(abar_t)
        = d / sqrt(alpha_t) + e beta_t / (sqrt(1 - abar_t) sqrt(alpha_t))
    in x_{t-1}: the x_0 error e sqrt(1 - abar_t) / sqrt(abar_t), amplified at the noisy levels,
    weighed by the posterior mean. e is the guided eps's: eps_u + w (eps_c - eps_u) moves by
    (|1 - w| + |w|) times one call's network_atol. The network's own response to the difference
    already in x_t is not counted (the schedule cannot know it); where x_0 is clipped, as nearly
    everywhere at the noisiest levels, that path is cut and x_t reaches x_{t-1} through ct_t
    only, far below the 1 / sqrt(alpha_t) counted.

    start: the difference in the plan a refinement starts from (Trajectory Diffuser's prior).
    Noising it to level ``levels`` scales it by sqrt(abar), and the
    steps' carries multiply it back by exactly 1 / sqrt(abar). Sampling from noise starts at 0:
    both paths read the same draws.
    """
    eps_atol = (abs(1.0 - guidance_scale) + abs(guidance_scale)) * network_atol
    bound = start * float(schedule.sqrt_alphas_cumprod[levels - 1])
    for t in range(levels - 1, -1, -1):
        alpha, beta = float(schedule.alphas[t]), float(schedule.betas[t])
        gain = beta / math.sqrt((1.0 - float(schedule.alphas_cumprod[t])) * alpha)
        bound = bound / math.sqrt(alpha) + gain * eps_atol + step_atol
    return bound


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs real rclpy in a private domain (its ros_env) as ``ros``.

    ``make check`` leaves out the ``ros`` and ``slow`` tests (the slow ones are marked where
    they are written); ``make test`` runs everything.
    """
    for item in items:
        if 'ros_env' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.ros)
