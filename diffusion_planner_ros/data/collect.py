"""Scripted data collection for PointMaze, written as a Minari dataset.

D4RL's maze2d recipe: the waypoint controller drives the ball to a random goal, and once it is
there (and has dwelt a moment, so the data also shows stopping at a goal) a new goal is drawn.
Gaussian action noise makes the data diverse. The goal in each stored observation is the goal
the next action was chosen for.
"""

from __future__ import annotations

from dataclasses import dataclass

import minari
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm import tqdm

from diffusion_planner_ros.data.maze import MazeGrid, WaypointController
from diffusion_planner_ros.data.minari_io import validate_dataset_id
from diffusion_planner_ros.envs import make_env, resolve_env_id


@dataclass
class CollectionConfig:
    """How much data and how noisy."""

    env_id: str = 'PointMaze_UMaze-v3'
    dataset_id: str = 'dpr/pointmaze-umaze-v0'
    # Total environment steps (D4RL's maze2d-umaze has about 1M).
    total_steps: int = 1_000_000
    # Steps per Minari episode; each holds several goals.
    episode_steps: int = 1000
    # Standard deviation of the Gaussian noise added to the controller's action.
    action_noise: float = 0.3
    # Steps spent at a reached goal before the next goal is drawn: uniform in [min, max].
    dwell_min: int = 5
    dwell_max: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        self.env_id = resolve_env_id(self.env_id)
        validate_dataset_id(self.dataset_id)
        if self.total_steps < 1 or self.episode_steps < 2:
            raise ValueError('total_steps must be >= 1 and episode_steps >= 2')
        if self.action_noise < 0 or not 0 <= self.dwell_min <= self.dwell_max:
            raise ValueError('action_noise must be >= 0 and 0 <= dwell_min <= dwell_max')


def _new_goal(env) -> np.ndarray:
    maze_env = env.unwrapped
    goal = maze_env.add_xy_position_noise(maze_env.generate_target_goal())
    maze_env.goal = goal
    maze_env.update_target_site_pos()
    return goal.copy()


def collect_episode(env, controller: WaypointController, steps: int, seed: int,
                    config: CollectionConfig, rng: np.random.Generator,
                    episode_id: int = 0) -> EpisodeBuffer:
    """Run the noisy controller for one episode of ``steps`` steps."""
    obs, _ = env.reset(seed=seed)
    keys = ('observation', 'achieved_goal', 'desired_goal')
    observations = {key: [obs[key].copy()] for key in keys}
    actions, rewards = [], []
    dwell_left = None
    for _ in range(steps):
        action = controller(obs['observation'], obs['desired_goal'])
        action = np.clip(action + config.action_noise * rng.standard_normal(2), -1.0, 1.0)
        obs, reward, _, _, info = env.step(action.astype(np.float32))
        actions.append(action)
        rewards.append(reward)
        if dwell_left is None and info['success']:
            dwell_left = int(rng.integers(config.dwell_min, config.dwell_max + 1))
        if dwell_left is not None:
            dwell_left -= 1
            if dwell_left < 0:
                obs['desired_goal'] = _new_goal(env)
                dwell_left = None
        for key in keys:
            observations[key].append(obs[key].copy())
    truncations = np.zeros(steps, dtype=bool)
    truncations[-1] = True
    return EpisodeBuffer(
        id=episode_id, seed=seed,
        observations={key: np.asarray(values) for key, values in observations.items()},
        actions=np.asarray(actions, dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.zeros(steps, dtype=bool),
        truncations=truncations,
    )


def collect_pointmaze(config: CollectionConfig, progress: bool = True) -> minari.MinariDataset:
    """Collect a dataset and write it to the local Minari folder under config.dataset_id."""
    env = make_env(config.env_id, max_episode_steps=config.episode_steps + 1)
    controller = WaypointController(MazeGrid.from_env(env))
    rng = np.random.default_rng(config.seed)
    buffers, collected = [], 0
    with tqdm(total=config.total_steps, desc=f'collect {config.dataset_id}', unit='step',
              disable=not progress) as bar:
        while collected < config.total_steps:
            steps = min(config.episode_steps, config.total_steps - collected)
            steps = max(steps, 2)
            episode = collect_episode(env, controller, steps, config.seed * 100003 + len(buffers),
                                      config, rng, episode_id=len(buffers))
            buffers.append(episode)
            collected += steps
            bar.update(steps)
    dataset = minari.create_dataset_from_buffers(
        dataset_id=config.dataset_id,
        buffer=buffers,
        env=env.spec,
        eval_env=config.env_id,
        algorithm_name='waypoint-pd-controller',
        author='diffusion_planner_ros',
        author_email='maintainers@diffusion-planner-ros.invalid',
        code_permalink='training/collect.py in the diffusion_planner_ros repository',
        description=(f'Scripted PointMaze data: shortest path on the grid, PD on the ball, '
                     f'action noise {config.action_noise}, seed {config.seed}.'),
    )
    env.close()
    return dataset
