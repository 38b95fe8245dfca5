"""The returns-to-go condition of an episode, with or without rewards reported (no ROS)."""

from __future__ import annotations

import math


def episode_target(planner, target_return: float | None = None) -> float | None:
    """Return the returns-to-go an episode starts at: target_return, else the planner's own.

    None for a planner that is not returns-conditioned; a NaN target_return means unset.
    """
    if planner.condition_kind != 'returns':
        return None
    if target_return is None or math.isnan(target_return):
        return planner.config.target_return
    return float(target_return)


def target_steps(planner) -> int:
    """Return the steps an episode's target is spread over where no rewards are reported.

    The planner's target_steps, else the time limit of the bundle's gymnasium env (the length of
    the episodes its target was chosen for). 0 for a planner that is not returns-conditioned.
    """
    if planner.condition_kind != 'returns':
        return 0
    if planner.config.target_steps:
        return planner.config.target_steps
    import gymnasium as gym

    from diffusion_planner_ros.envs import register_envs

    register_envs()
    try:
        limit = gym.spec(planner.bundle.env_id).max_episode_steps
    except gym.error.Error:
        limit = None
    if not limit:
        raise ValueError(f'bundle env {planner.bundle.env_id!r} has no episode length to spread '
                         'its target over: set planner.target_steps in the bundle\'s config.json')
    return int(limit)


class ReturnsToGo:
    """The returns-to-go condition of one episode.

    Where the robot reports rewards, the target less each reward received (the paper's protocol).
    Where it reports none, as a real robot does, the target less an even share per step:
    ``target / steps`` for each step since the episode began. Measured on Hopper (docs/realtime.md)
    the paced target scores within one point of the rewarded one; a target held constant loses
    two thirds of the score. ``value`` is None for a planner that is not returns-conditioned.
    """

    def __init__(self, target: float | None, steps: int = 0):
        if steps < 0:
            raise ValueError(f'steps must be >= 0 (0: no pace), got {steps}')
        self.target = None if target is None else float(target)
        self.steps = steps
        self.spent, self.rewards = 0.0, 0

    @property
    def value(self) -> float | None:
        """Return the target less the rewards received so far."""
        return None if self.target is None else self.target - self.spent

    def at(self, step: int) -> float | None:
        """Return the condition for the episode's ``step``: rewarded if any came, else paced.

        Past ``steps`` the paced target stays at its last share. Without a pace (steps 0) the
        target less the rewards received, as ``value``.
        """
        if self.target is None or self.rewards or not self.steps:
            return self.value
        return self.target * (1.0 - min(max(step, 0), self.steps - 1) / self.steps)

    def spend(self, reward: float) -> None:
        """Take one step's reward off the target."""
        self.spent += float(reward)
        self.rewards += 1

    def retarget(self, target: float | None) -> None:
        """Change the episode's target; what was spent stays spent."""
        self.target = None if target is None else float(target)

    def reset(self) -> None:
        """Start the next episode at the target again."""
        self.spent, self.rewards = 0.0, 0
