"""Loading Minari datasets: local ids, and remote ids that fail fast when offline."""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# namespace/name-vN (namespaces may nest: D4RL/pointmaze/umaze-v2).
_DATASET_ID = re.compile(r'^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*-v\d+$')
# Where each Minari remote kind answers HTTPS.
_REMOTE_URLS = {'hf': 'https://huggingface.co', 'gcp': 'https://storage.googleapis.com'}

LOG = logging.getLogger(__name__)


def validate_dataset_id(dataset_id: str) -> str:
    """Reject ids that are not of the form namespace/name-vN or that could escape the folder."""
    if not isinstance(dataset_id, str) or not _DATASET_ID.match(dataset_id) or '..' in dataset_id:
        raise ValueError(f'dataset id {dataset_id!r} is not of the form namespace/name-vN '
                         '(letters, digits, _ and - only), e.g. dpr/pointmaze-umaze-v0')
    return dataset_id


@dataclass
class Episode:
    """One episode as flat arrays: T actions and T + 1 observations."""

    observations: np.ndarray   # (T + 1, obs_dim)
    actions: np.ndarray        # (T, action_dim)
    rewards: np.ndarray        # (T,)
    achieved_goals: np.ndarray | None  # (T + 1, goal_dim)
    desired_goals: np.ndarray | None   # (T + 1, goal_dim)


def _remote_reachable(timeout_s: float) -> tuple[bool, str]:
    """Whether the Minari remote answers HTTPS within the timeout (any HTTP status counts)."""
    remote = os.environ.get('MINARI_REMOTE', 'hf://farama-minari')
    url = _REMOTE_URLS.get(remote.split('://', 1)[0], remote)
    try:
        urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout_s)
    except urllib.error.HTTPError:
        return True, url
    except (OSError, ValueError):
        return False, url
    return True, url


def load_minari(dataset_id: str, download_timeout_s: float = 3.0):
    """Load a local Minari dataset, or download a remote one when the remote answers quickly."""
    import minari

    validate_dataset_id(dataset_id)
    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError:
        pass
    reachable, url = _remote_reachable(download_timeout_s)
    if not reachable:
        folder = os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')
        raise RuntimeError(
            f'Minari dataset {dataset_id!r} is not in the local folder {folder} and the remote '
            f'({url}) cannot be reached. Make a local dataset with training/collect.py, set '
            f'MINARI_DATASETS_PATH to where it lives, or connect and run '
            f'`minari download {dataset_id}`.')
    minari.download_dataset(dataset_id)
    return minari.load_dataset(dataset_id)


def local_dataset_exists(dataset_id: str) -> bool:
    """Whether a Minari dataset with this id is in the local folder."""
    import minari

    validate_dataset_id(dataset_id)
    return dataset_id in minari.list_local_datasets()


def read_episodes(dataset, drop_nonfinite: bool = False) -> list[Episode]:
    """All episodes of a Minari dataset as flat float arrays, checked for NaN and inf.

    An episode with NaN or inf is an error naming it and the field, or with drop_nonfinite it
    is left out and named in a warning.
    """
    episodes, dropped = [], []
    for episode in dataset.iterate_episodes():
        obs = episode.observations
        if isinstance(obs, dict):
            states = np.asarray(obs['observation'], dtype=np.float64)
            achieved = np.asarray(obs['achieved_goal'], dtype=np.float64)
            desired = np.asarray(obs['desired_goal'], dtype=np.float64)
        else:
            states, achieved, desired = np.asarray(obs, dtype=np.float64), None, None
        item = Episode(states, np.asarray(episode.actions, dtype=np.float64),
                       np.asarray(episode.rewards, dtype=np.float64), achieved, desired)
        bad = [name for name in ('observations', 'actions', 'rewards', 'achieved_goals',
                                 'desired_goals')
               if getattr(item, name) is not None and not np.all(np.isfinite(getattr(item, name)))]
        if bad and not drop_nonfinite:
            raise ValueError(f'episode {episode.id} of dataset {dataset.spec.dataset_id} has NaN '
                             f'or inf in {", ".join(bad)} (set data.drop_nonfinite to drop such '
                             f'episodes)')
        if bad:
            dropped.append(f'{episode.id} ({", ".join(bad)})')
            continue
        episodes.append(item)
    if dropped:
        LOG.warning('dataset %s: dropped %d episode(s) with NaN or inf: %s',
                    dataset.spec.dataset_id, len(dropped), '; '.join(dropped))
    if not episodes:
        raise ValueError(f'dataset {dataset.spec.dataset_id} has no episodes'
                         + (' left after dropping those with NaN or inf' if dropped else ''))
    return episodes


def dataset_env_id(dataset) -> str:
    """Return the gymnasium id recorded in a Minari dataset, or '' if none."""
    spec = dataset.spec.env_spec
    return spec.id if spec is not None else ''


def write_dataset(dataset_id: str, buffers: list, **metadata):
    """Write episode buffers as the local Minari dataset ``dataset_id`` and return it.

    An existing id is refused, and a write that fails part-way leaves no folder behind, so a
    partial dataset never sits under the requested id. ``metadata`` goes to
    minari.create_dataset_from_buffers (env or spaces, algorithm_name, description, ...).
    """
    import minari
    from minari.storage import get_dataset_path

    validate_dataset_id(dataset_id)
    if local_dataset_exists(dataset_id):
        raise ValueError(f'dataset {dataset_id} already exists; delete it first '
                         f'(minari delete {dataset_id}) or choose another id')
    if not buffers:
        raise ValueError(f'no episodes to write as {dataset_id}')
    metadata.setdefault('author', 'diffusion_planner_ros')
    metadata.setdefault('author_email', 'maintainers@diffusion-planner-ros.invalid')
    target = Path(get_dataset_path(dataset_id))
    try:
        return minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers,
                                                  **metadata)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
