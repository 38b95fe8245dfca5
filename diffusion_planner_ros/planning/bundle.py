"""A bundle directory rebuilds the whole planner from its path.

Files: config.json (experiment config, dims, env and dataset ids, action bounds, method),
normalizer.json, and one safetensors file per model. Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_planner_ros.config import ExperimentConfig, config_from_dict, config_to_dict
from diffusion_planner_ros.data.normalizer import Normalizer
from diffusion_planner_ros.models import InverseDynamics, TemporalUnet, TrajectoryPrior

BUNDLE_FORMAT = 'diffusion_planner_ros.bundle'
BUNDLE_VERSION = 1
METHOD = 'trajectory_diffuser'
CONFIG_FILE = 'config.json'
NORMALIZER_FILE = 'normalizer.json'
WEIGHT_FILES = {
    'prior': 'prior.safetensors',
    'diffuser': 'diffuser.safetensors',
    'inverse_dynamics': 'inverse_dynamics.safetensors',
}


@dataclass
class Dims:
    """Sizes of the vectors the models exchange."""

    obs: int
    action: int
    condition: int


def build_models(config: ExperimentConfig, dims: Dims) -> dict[str, nn.Module]:
    """Fresh prior, U-Net and inverse dynamics for a config and data sizes."""
    block_size = config.data.history + config.data.horizon
    return {
        'prior': TrajectoryPrior(config.prior, dims.obs, dims.condition, block_size),
        'diffuser': TemporalUnet(config.unet, dims.obs, dims.condition, config.data.horizon),
        'inverse_dynamics': InverseDynamics(config.inverse_dynamics, dims.obs, dims.action),
    }


@dataclass
class Bundle:
    """Everything the planner needs, loaded from a bundle directory."""

    path: Path
    config: ExperimentConfig
    env_id: str
    dataset_id: str
    dims: Dims
    action_low: np.ndarray
    action_high: np.ndarray
    normalizers: dict[str, Normalizer]
    models: dict[str, nn.Module]


def save_bundle(path: str | Path, config: ExperimentConfig, env_id: str, dims: Dims,
                action_low: np.ndarray, action_high: np.ndarray,
                normalizers: dict[str, Normalizer], models: dict[str, nn.Module]) -> Path:
    """Write a bundle directory (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        'format': BUNDLE_FORMAT,
        'version': BUNDLE_VERSION,
        'method': METHOD,
        'env_id': env_id,
        'dataset_id': config.data.dataset_id,
        'dims': {'obs': dims.obs, 'action': dims.action, 'condition': dims.condition},
        'action_low': np.asarray(action_low, dtype=float).tolist(),
        'action_high': np.asarray(action_high, dtype=float).tolist(),
        'config': config_to_dict(config),
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + '\n')
    stats = {name: norm.to_dict() for name, norm in normalizers.items()}
    (path / NORMALIZER_FILE).write_text(json.dumps(stats, indent=2) + '\n')
    for name, filename in WEIGHT_FILES.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in models[name].state_dict().items()}
        save_file(tensors, str(path / filename), metadata={'model': name})
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f'bundle {path.parent} is missing {path.name}')
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


def load_bundle(path: str | Path, device: torch.device | str = 'cpu',
                expected_env_id: str | None = None) -> Bundle:
    """Load and check a bundle directory; every error names the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f'bundle directory {path} does not exist')
    missing = [f for f in (CONFIG_FILE, NORMALIZER_FILE, *WEIGHT_FILES.values())
               if not (path / f).is_file()]
    if missing:
        raise ValueError(f'bundle {path} is missing {", ".join(missing)}')
    source = path / CONFIG_FILE
    meta = _read_json(source)
    if meta.get('format') != BUNDLE_FORMAT:
        raise ValueError(f'{source} is not a diffusion_planner_ros bundle config '
                         f'(format {meta.get("format")!r})')
    if meta.get('method') != METHOD:
        raise ValueError(f'{source} holds method {meta.get("method")!r}; this planner runs '
                         f'{METHOD!r}')
    env_id = _field(meta, 'env_id', str, source)
    if expected_env_id is not None and env_id != expected_env_id:
        raise ValueError(f'bundle {path} was trained for env {env_id!r}, not {expected_env_id!r}')
    raw_dims = _field(meta, 'dims', dict, source)
    try:
        dims = Dims(int(raw_dims['obs']), int(raw_dims['action']), int(raw_dims['condition']))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{source} field dims must hold integers obs, action, condition') \
            from error
    try:
        config = config_from_dict(_field(meta, 'config', dict, source))
    except (TypeError, ValueError) as error:
        raise ValueError(f'{source}: {error}') from error
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

    models = build_models(config, dims)
    for name, filename in WEIGHT_FILES.items():
        weights = path / filename
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
    return Bundle(path, config, env_id, meta.get('dataset_id', ''), dims, action_low,
                  action_high, normalizers, models)
