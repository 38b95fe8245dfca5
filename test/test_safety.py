"""Untrusted inputs at the edges: crafted pickles, NaN datasets."""

import pickle

import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer
from test_bundle_planner import write_bundle

from diffusion_planner_ros.data.minari_io import load_minari, read_episodes
from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.planning import load_planner


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_crafted_pickle_in_a_bundle_is_refused_and_never_run(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    marker = tmp_path / 'payload_ran'
    payload = pickle.dumps({'weights': RunsCode(marker)})
    (bundle / 'prior.safetensors').write_bytes(payload)
    with pytest.raises(ValueError, match='prior.safetensors'):
        load_planner(bundle, backend='eager')
    assert not marker.exists()
    # torch.load as the package would ever call it (weights_only) refuses the payload too.
    torch_file = tmp_path / 'checkpoint.pt'
    torch_file.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(torch_file, weights_only=True)
    assert not marker.exists()


def write_episodes(dataset_id, corrupt):
    """Three short PointMaze episodes; ``corrupt`` maps an episode to the field given NaN."""
    env = make_env('umaze', max_episode_steps=20)
    rng = np.random.default_rng(0)
    buffers = []
    for index in range(3):
        steps = 10
        observations = {key: rng.uniform(-1, 1, (steps + 1, size))
                        for key, size in (('observation', 4), ('achieved_goal', 2),
                                          ('desired_goal', 2))}
        actions = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
        rewards = np.zeros(steps)
        if corrupt.get(index) == 'actions':
            actions[3, 1] = np.nan
        if corrupt.get(index) == 'observations':
            observations['observation'][5, 0] = np.inf
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(id=index, observations=observations, actions=actions,
                                     rewards=rewards, terminations=np.zeros(steps, dtype=bool),
                                     truncations=truncations))
    minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=env.spec,
                                       algorithm_name='test', author='test',
                                       author_email='test@example.invalid',
                                       code_permalink='test/test_safety.py',
                                       description='NaN test episodes', eval_env=env.spec)
    env.close()
    return load_minari(dataset_id)


def test_a_dataset_with_nan_is_refused_unless_dropping_is_asked_for(caplog):
    dataset = write_episodes('test/nan-v0', {1: 'actions', 2: 'observations'})
    with pytest.raises(ValueError, match=r'episode 1 of dataset test/nan-v0 has NaN or inf in '
                                         r'actions.*drop_nonfinite'):
        read_episodes(dataset)
    kept = read_episodes(dataset, drop_nonfinite=True)
    assert len(kept) == 1 and np.all(np.isfinite(kept[0].actions))
    assert 'dropped 2 episode(s) with NaN or inf: 1 (actions); 2 (observations)' in caplog.text
    everything_bad = write_episodes('test/allnan-v0', {0: 'actions', 1: 'actions', 2: 'actions'})
    with pytest.raises(ValueError, match='no episodes left after dropping'):
        read_episodes(everything_bad, drop_nonfinite=True)
