"""A bundle directory rebuilds the whole planner from its path.

Files: config.json (experiment config, dims, env and dataset ids, action bounds, method),
normalizer.json, and one safetensors file per network of the method (models.method_components:
the critic too where method.critic is set).
Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_planner_ros.config import (JOINT_METHODS, METHODS, ExperimentConfig,
                                          config_from_dict, config_to_dict, with_overrides)
from diffusion_planner_ros.data.normalizer import Normalizer
from diffusion_planner_ros.models import Dims, build_models, method_components
from diffusion_planner_ros.robots import dims_mismatch, profile_from_dict, RobotProfile

BUNDLE_FORMAT = 'diffusion_planner_ros.bundle'
BUNDLE_VERSION = 1
CONFIG_FILE = 'config.json'
NORMALIZER_FILE = 'normalizer.json'

# What an untrained (timing-only) bundle may change: network sizes and the plan's length, never
# the method, its noise schedule or the planner's settings.
SIZE_SECTIONS = ('prior', 'unet', 'inverse_dynamics', 'dynamics', 'policy')
SIZE_KEYS = ('data.horizon', 'data.history')

__all__ = ['Bundle', 'Dims', 'build_models', 'derive_bundle', 'load_bundle', 'read_method',
           'save_bundle', 'untrained_bundle', 'weight_files']


def weight_files(config: ExperimentConfig) -> dict[str, str]:
    """Network name -> safetensors file name for a bundle of the config's method."""
    return {name: f'{name}.safetensors' for name in method_components(config)}


@dataclass
class Bundle:
    """Everything the planner needs, loaded from a bundle directory."""

    path: Path
    method: str
    config: ExperimentConfig
    env_id: str
    dataset_id: str
    dims: Dims
    action_low: np.ndarray
    action_high: np.ndarray
    normalizers: dict[str, Normalizer]
    models: dict[str, nn.Module]
    # The robot profile the bundle was trained for (None: the bundle records none).
    robot: RobotProfile | None = None


def save_bundle(path: str | Path, config: ExperimentConfig, env_id: str, dims: Dims,
                action_low: np.ndarray, action_high: np.ndarray,
                normalizers: dict[str, Normalizer], models: dict[str, nn.Module],
                robot: RobotProfile | None = None) -> Path:
    """Write a bundle of the config's method (directory created if needed).

    ``robot`` is the profile of the robot the data came from; it must fit the dimensions.
    """
    if robot is not None and dims_mismatch(robot, dims.obs, dims.action):
        raise ValueError(dims_mismatch(robot, dims.obs, dims.action))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    method = config.method.name
    meta = {
        'format': BUNDLE_FORMAT,
        'version': BUNDLE_VERSION,
        'method': method,
        'env_id': env_id,
        'dataset_id': config.data.dataset_id,
        'dims': {'obs': dims.obs, 'action': dims.action, 'condition': dims.condition},
        'action_low': np.asarray(action_low, dtype=float).tolist(),
        'action_high': np.asarray(action_high, dtype=float).tolist(),
        'config': config_to_dict(config),
    }
    if robot is not None:
        meta['robot'] = robot.to_dict()
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + '\n')
    stats = {name: norm.to_dict() for name, norm in normalizers.items()}
    (path / NORMALIZER_FILE).write_text(json.dumps(stats, indent=2) + '\n')
    for name, filename in weight_files(config).items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in models[name].state_dict().items()}
        save_file(tensors, str(path / filename), metadata={'model': name})
    return path


def derive_bundle(source: str | Path, method: str, path: str | Path) -> Path:
    """Write a bundle of ``method`` that reuses networks of an existing bundle.

    Decision Diffuser is Trajectory Diffuser without the prior: same U-Net training (paper Eq. 6)
    and the same inverse dynamics, so its bundle can share those weights exactly. The derived
    config records the new method; nothing is retrained.
    """
    bundle = load_bundle(source)
    missing = [n for n in method_components(bundle.config, method) if n not in bundle.models]
    if missing or (bundle.method in JOINT_METHODS) != (method in JOINT_METHODS):
        raise ValueError(f'a {method} bundle cannot be derived from the {bundle.method} bundle '
                         f'{source} (missing {missing or "compatible diffuser"})')
    config = replace(bundle.config, method=replace(bundle.config.method, name=method))
    return save_bundle(path, config, bundle.env_id, bundle.dims, bundle.action_low,
                       bundle.action_high, bundle.normalizers, bundle.models, bundle.robot)


def untrained_bundle(source: str | Path, sizes: list[str], path: str | Path,
                     seed: int = 0) -> Path:
    """Write a bundle like ``source`` with freshly initialised networks of other sizes.

    For timing only. A plan's cost does not depend on the weights' values, so this tells what a
    plan with networks of these sizes would cost before any is trained. The networks are
    untrained, so never plan a robot with the result. ``sizes`` are 'section.key=value' overrides
    of SIZE_SECTIONS or SIZE_KEYS (say prior.n_embd=256); the method, the environment, the
    normalisers and the planner settings stay those of ``source``.
    """
    bundle = load_bundle(source)
    for item in sizes:
        key = item.partition('=')[0]
        if key.partition('.')[0] not in SIZE_SECTIONS and key not in SIZE_KEYS:
            raise ValueError(f'{item!r} is not a size: an untrained bundle takes overrides of '
                             f'the sections {SIZE_SECTIONS} or of {SIZE_KEYS}')
    config = with_overrides(bundle.config, sizes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        models = build_models(config, bundle.dims, bundle.method)
    return save_bundle(path, config, bundle.env_id, bundle.dims, bundle.action_low,
                       bundle.action_high, bundle.normalizers, models, bundle.robot)


def _inside(path: Path) -> Path:
    """Refuse a bundle file that is a link leading out of its bundle directory."""
    if not path.resolve().is_relative_to(path.parent.resolve()):
        raise ValueError(f'{path} leads out of its bundle directory (to {path.resolve()}); '
                         'a bundle reads only its own files')
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f'bundle {path.parent} is missing {path.name}')
    _inside(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not valid JSON: {error}') from error
    if not isinstance(data, dict):
        raise ValueError(f'{path} must hold a JSON object')
    return data


def _field(meta: dict, name: str, kind: type, source: Path):
    if name not in meta:
        raise ValueError(f'{source} has no field {name!r}')
    value = meta[name]
    if not isinstance(value, kind):
        raise ValueError(f'{source} field {name!r} must be {kind.__name__}, '
                         f'got {type(value).__name__}')
    return value


def read_method(path: str | Path) -> str:
    """Return the method a bundle records, from its config.json alone (no weights read)."""
    source = Path(path) / CONFIG_FILE
    if not source.is_file():
        raise ValueError(f'bundle {path} is missing {CONFIG_FILE}')
    method = _read_json(source).get('method')
    if method not in METHODS:
        raise ValueError(f'{source} field \'method\' is {method!r}; known methods are {METHODS}')
    return method


def read_config(path: str | Path) -> ExperimentConfig:
    """Return the experiment config a bundle records, from its config.json alone."""
    source = Path(path) / CONFIG_FILE
    return _config(_field(_read_json(source), 'config', dict, source), source)


def _config(raw: dict, source: Path) -> ExperimentConfig:
    # A bundle written before the reward model was bounded records no reward_head: its
    # weights are a linear head's.
    try:
        raw = {**raw, 'dynamics': {'reward_head': 'linear', **(raw.get('dynamics') or {})}}
        return config_from_dict(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{source}: {error}') from error


def load_bundle(path: str | Path, device: torch.device | str = 'cpu',
                expected_env_id: str | None = None) -> Bundle:
    """Load and check a bundle directory; every error names the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f'bundle directory {path} does not exist')
    missing = [f for f in (CONFIG_FILE, NORMALIZER_FILE) if not (path / f).is_file()]
    if missing:
        raise ValueError(f'bundle {path} is missing {", ".join(missing)}')
    source = path / CONFIG_FILE
    meta = _read_json(source)
    if meta.get('format') != BUNDLE_FORMAT:
        raise ValueError(f'{source} is not a diffusion_planner_ros bundle config '
                         f'(format {meta.get("format")!r})')
    method = meta.get('method')
    if method not in METHODS:
        raise ValueError(f'{source} field \'method\' is {method!r}; known methods are {METHODS}')
    env_id = _field(meta, 'env_id', str, source)
    if expected_env_id is not None and env_id != expected_env_id:
        raise ValueError(f'bundle {path} was trained for env {env_id!r}, not {expected_env_id!r}')
    raw_dims = _field(meta, 'dims', dict, source)
    try:
        dims = Dims(int(raw_dims['obs']), int(raw_dims['action']), int(raw_dims['condition']))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{source} field dims must hold integers obs, action, condition') \
            from error
    raw_config = _field(meta, 'config', dict, source)
    recorded = (raw_config.get('method') or {}).get('name', method)
    if recorded != method:
        raise ValueError(f'{source}: field method {method!r} disagrees with config.method.name '
                         f'{recorded!r}')
    config = _config(raw_config, source)
    # Bundles written before the method section existed record the method only at the top.
    config = replace(config, method=replace(config.method, name=method))
    files = weight_files(config)
    missing = [f for f in files.values() if not (path / f).is_file()]
    if missing:
        raise ValueError(f'bundle {path} is missing {", ".join(missing)}')
    action_low = np.asarray(_field(meta, 'action_low', list, source), dtype=float)
    action_high = np.asarray(_field(meta, 'action_high', list, source), dtype=float)
    if action_low.shape != (dims.action,) or action_high.shape != (dims.action,):
        raise ValueError(f'{source}: action bounds must have {dims.action} entries')

    stats_source = path / NORMALIZER_FILE
    stats = _read_json(stats_source)
    try:
        normalizers = {name: Normalizer.from_dict(value) for name, value in stats.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{stats_source}: {error}') from error
    wanted = {'states': dims.obs, 'actions': dims.action}
    if config.data.condition == 'goal':
        wanted['goals'] = dims.condition
    for name, size in wanted.items():
        if name not in normalizers or normalizers[name].dim != size:
            raise ValueError(f'{stats_source} needs {name!r} statistics of size {size}')

    models = build_models(config, dims, method)
    for name, filename in files.items():
        weights = _inside(path / filename)
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f'{weights} is not a readable safetensors file: {error}') from error
        try:
            models[name].load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f'{weights} does not match the architecture in {source}: '
                             f'{str(error).splitlines()[0]}') from error
        models[name].to(device).eval()
    robot = None
    if meta.get('robot') is not None:
        robot = profile_from_dict(meta['robot'], f'{source} field robot')
        if dims_mismatch(robot, dims.obs, dims.action):
            raise ValueError(f'{source}: {dims_mismatch(robot, dims.obs, dims.action)}')
    return Bundle(path, method, config, env_id, meta.get('dataset_id', ''), dims, action_low,
                  action_high, normalizers, models, robot)
