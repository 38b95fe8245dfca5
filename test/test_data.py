"""Datasets: collection, Minari loading, windows, hindsight goals, normaliser."""

import time

import numpy as np
import pytest
import torch

from diffusion_planner_ros.data.collect import CollectionConfig, collect_pointmaze
from diffusion_planner_ros.data.maze import MazeGrid
from diffusion_planner_ros.data.minari_io import (load_minari, read_episodes,
                                                  validate_dataset_id)
from diffusion_planner_ros.data.normalizer import Normalizer
from diffusion_planner_ros.data.sequence import (CONDITIONS, STATES, SequenceDataset,
                                                 returns_to_go, segment_ends)


def test_normalizer_round_trip_numpy_and_torch():
    data = np.random.default_rng(0).normal(size=(100, 3)) * [1, 10, 0.1]
    norm = Normalizer.fit(data)
    scaled = norm.normalize(data)
    assert scaled.min() >= -1 - 1e-9 and scaled.max() <= 1 + 1e-9
    assert np.allclose(norm.unnormalize(scaled), data)
    tensor = torch.as_tensor(data, dtype=torch.float64)
    assert torch.allclose(norm.unnormalize(norm.normalize(tensor)), tensor)
    again = Normalizer.from_dict(norm.to_dict())
    assert np.allclose(again.normalize(data), scaled)


def test_normalizer_rejects_bad_bounds():
    with pytest.raises(ValueError, match='finite'):
        Normalizer(np.array([0.0, np.nan]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match='high must be'):
        Normalizer(np.array([1.0]), np.array([0.0]))


def test_returns_to_go_discounted():
    rtg = returns_to_go(np.array([1.0, 0.0, 2.0]), 0.5)
    assert np.allclose(rtg, [1.0 + 0.0 + 0.25 * 2.0, 1.0, 2.0, 0.0])


def test_segment_ends():
    goals = np.array([[0, 0], [0, 0], [1, 1], [1, 1], [1, 1], [2, 2]], dtype=float)
    assert segment_ends(goals).tolist() == [1, 1, 4, 4, 4, 5]


def test_dataset_ids_are_validated():
    assert validate_dataset_id('D4RL/pointmaze/umaze-v2')
    for bad in ('../escape-v0', 'no-version', 'a/b/../../c-v0', '/abs/path-v0'):
        with pytest.raises(ValueError, match='namespace/name-vN'):
            validate_dataset_id(bad)


def test_missing_remote_dataset_fails_fast_with_advice(monkeypatch):
    # A closed loopback port stands for a remote that cannot be reached.
    monkeypatch.setenv('MINARI_REMOTE', 'gcp://bucket')
    monkeypatch.setattr('diffusion_planner_ros.data.minari_io._REMOTE_URLS',
                        {'gcp': 'https://127.0.0.1:9'})
    start = time.monotonic()
    with pytest.raises(RuntimeError, match='training/collect.py'):
        load_minari('D4RL/pointmaze/umaze-v2', download_timeout_s=1.0)
    assert time.monotonic() - start < 5.0


@pytest.fixture
def tiny_dataset():
    config = CollectionConfig(env_id='umaze', dataset_id='test/tiny-v0', total_steps=3000,
                              episode_steps=1000, seed=3)
    return collect_pointmaze(config, progress=False)


def test_collection_is_deterministic_and_reaches_goals(tiny_dataset):
    episodes = read_episodes(load_minari('test/tiny-v0'))
    assert len(episodes) == 3 and episodes[0].actions.shape == (1000, 2)
    assert episodes[0].observations.shape == (1001, 4)
    again = collect_pointmaze(CollectionConfig(env_id='umaze', dataset_id='test/again-v0',
                                               total_steps=3000, seed=3), progress=False)
    other = read_episodes(again)
    assert np.array_equal(episodes[1].observations, other[1].observations)
    # Several goals per episode, each reached before the next is drawn.
    ends = segment_ends(episodes[0].desired_goals)
    finished = np.unique(ends)[:-1]
    assert len(finished) >= 3
    gaps = np.linalg.norm(episodes[0].achieved_goals[finished]
                          - episodes[0].desired_goals[finished], axis=1)
    assert np.all(gaps <= 0.45)


def test_windows_stay_in_one_goal_segment_and_goals_lie_ahead(tiny_dataset):
    episodes = read_episodes(load_minari('test/tiny-v0'))
    data = SequenceDataset(episodes, 'goal')
    batch = data.sample_windows(np.random.default_rng(0), 64, 12)
    assert batch[STATES].shape == (64, 12, 4) and batch[CONDITIONS].shape == (64, 12, 2)
    assert batch[STATES].abs().max() <= 1.0 + 1e-6
    for index, start in data.window_starts(12):
        assert start + 11 <= data.segment_ends[index][start]
    # A hindsight goal is a position reached at or after the window's last state.
    goal = data.normalizers['goals'].unnormalize(batch[CONDITIONS][0, 0].double().numpy())
    positions = np.concatenate([e.achieved_goals for e in episodes])
    assert np.min(np.linalg.norm(positions - goal, axis=1)) < 1e-5


def test_returns_windows_and_transitions(tiny_dataset):
    episodes = read_episodes(load_minari('test/tiny-v0'))
    data = SequenceDataset(episodes, 'returns', discount=0.99, returns_scale=100.0)
    batch = data.sample_windows(np.random.default_rng(1), 8, 5)
    assert batch[CONDITIONS].shape == (8, 5, 1)
    transitions = data.sample_transitions(np.random.default_rng(1), 8)
    assert transitions['actions'].shape == (8, 2)


def test_start_fraction_draws_that_share_of_windows_from_episode_starts(tiny_dataset):
    episodes = read_episodes(load_minari('test/tiny-v0'))
    firsts = {tuple(np.round(e.observations[0], 6)) for e in episodes}

    def share_from_start(fraction):
        data = SequenceDataset(episodes, 'returns', start_fraction=fraction)
        states = data.normalizers[STATES].unnormalize(
            data.sample_windows(np.random.default_rng(2), 40, 5)[STATES][:, 0].double().numpy())
        return np.mean([tuple(np.round(s, 6)) in firsts for s in states])

    assert share_from_start(1.0) == 1.0
    assert share_from_start(0.5) >= 0.5
    assert share_from_start(0.0) < 0.5
    with pytest.raises(ValueError, match='start_fraction'):
        SequenceDataset(episodes, 'returns', start_fraction=1.5)


def test_goal_condition_needs_goal_data():
    from diffusion_planner_ros.data.minari_io import Episode
    episode = Episode(np.zeros((5, 3)), np.zeros((4, 1)), np.zeros(4), None, None)
    with pytest.raises(ValueError, match='goal conditioning'):
        SequenceDataset([episode], 'goal')


def test_maze_grid_paths():
    grid = MazeGrid([[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1],
                     [1, 1, 1, 1, 1]])
    path = grid.shortest_path((1, 1), (3, 1))
    assert path[0] == (1, 1) and path[-1] == (3, 1) and len(path) == 7
    assert grid.xy_to_cell(grid.cell_to_xy((3, 2))) == (3, 2)
    assert grid.is_free(grid.cell_to_xy((1, 1))) and not grid.is_free(np.array([0.0, 0.0]))
