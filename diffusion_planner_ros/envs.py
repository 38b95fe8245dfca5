"""Gymnasium env construction and the observation / goal conventions of the planner."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

_REGISTERED = False

# Short names accepted by the scripts, mapped to gymnasium-robotics ids.
MAZE_ENVS = {
    'umaze': 'PointMaze_UMaze-v3',
    'medium': 'PointMaze_Medium-v3',
    'large': 'PointMaze_Large-v3',
}
# Locomotion envs of the D4RL-style datasets.
LOCOMOTION_ENVS = {
    'hopper': 'Hopper-v5',
    'walker2d': 'Walker2d-v5',
    'halfcheetah': 'HalfCheetah-v5',
}


def register_envs() -> None:
    """Register gymnasium-robotics envs once per process."""
    global _REGISTERED
    if not _REGISTERED:
        import gymnasium_robotics
        gym.register_envs(gymnasium_robotics)
        _REGISTERED = True


def resolve_env_id(name: str) -> str:
    """Accept a short name (umaze, medium, large, hopper, walker2d, ...) or a gymnasium id."""
    return MAZE_ENVS.get(name, LOCOMOTION_ENVS.get(name, name))


def is_goal_env(env_id: str) -> bool:
    """Whether the env is a goal-reaching maze (dict observation with a desired goal)."""
    return 'Maze' in env_id


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """Make an env; goal mazes run as continuing tasks with a fixed goal per episode."""
    register_envs()
    env_id = resolve_env_id(env_id)
    if is_goal_env(env_id):
        # The ball stays at the goal and collects reward there, as in D4RL's maze2d protocol.
        kwargs.setdefault('continuing_task', True)
        kwargs.setdefault('reset_target', False)
    # Maze envs write their generated XML under TMPDIR; make sure it exists.
    os.makedirs(os.environ.get('TMPDIR', '/tmp'), exist_ok=True)
    return gym.make(env_id, **kwargs)


def split_observation(observation: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """State vector and goal (or None) from a gymnasium observation."""
    if isinstance(observation, dict):
        return (np.asarray(observation['observation'], dtype=np.float64),
                np.asarray(observation['desired_goal'], dtype=np.float64))
    return np.asarray(observation, dtype=np.float64), None
