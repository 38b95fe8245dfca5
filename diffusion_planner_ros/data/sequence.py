"""Training windows over Minari episodes: states, conditions, transitions.

Conditions are returns-to-go (reward tasks) or goals relabelled in hindsight (navigation). A
hindsight goal for a window is a position the ball really reached at or after the window's last
state, inside the same goal segment of the data (the stretch during which the data's controller
pursued one goal), so every window is a piece of a path that really leads to its goal. Diffuser's
maze windows are longer than most goal segments; with ``span_goal_switches`` a window may cross
them, and its goal is drawn from its last state's segment.

Windows can also carry the actions and per-step rewards the baselines learn from (Diffuser's
joint trajectories, its return model, DMEMM's reward model). For goal tasks the reward is
relabelled with the window's goal the way PointMaze's dense reward is defined,
r_t = exp(-||achieved_t - goal||), so it lies in (0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_planner_ros.data.minari_io import Episode
from diffusion_planner_ros.data.normalizer import Normalizer

# Batch keys.
STATES = 'states'
CONDITIONS = 'conditions'
ACTIONS = 'actions'
NEXT_STATES = 'next_states'
REWARDS = 'rewards'


def dense_goal_reward(achieved: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """exp(-distance to the goal): PointMaze's dense reward, (..., goal_dim) -> (...)."""
    return np.exp(-np.linalg.norm(achieved - goal, axis=-1))


def returns_to_go(rewards: np.ndarray, discount: float) -> np.ndarray:
    """R_t = sum_{t' >= t} discount^(t' - t) r_t'; one more entry (0) for the final state."""
    rtg = np.zeros(len(rewards) + 1)
    for t in range(len(rewards) - 1, -1, -1):
        rtg[t] = rewards[t] + discount * rtg[t + 1]
    return rtg


def segment_ends(desired_goals: np.ndarray) -> np.ndarray:
    """For each index, the last index of the run of equal desired goals it belongs to."""
    n = len(desired_goals)
    changes = np.any(desired_goals[1:] != desired_goals[:-1], axis=1)
    ends = np.empty(n, dtype=np.int64)
    end = n - 1
    for t in range(n - 1, -1, -1):
        if t < n - 1 and changes[t]:
            end = t
        ends[t] = end
    return ends


class SequenceDataset:
    """Random windows and transitions from a list of episodes, normalised to [-1, 1]."""

    def __init__(self, episodes: list[Episode], condition: str, discount: float = 1.0,
                 returns_scale: float = 1.0, normalizers: dict[str, Normalizer] | None = None,
                 start_fraction: float = 0.0, span_goal_switches: bool = False):
        if condition not in ('goal', 'returns'):
            raise ValueError(f'condition {condition!r} must be goal or returns')
        if not 0.0 <= start_fraction <= 1.0:
            raise ValueError(f'start_fraction {start_fraction} must be in [0, 1]')
        self.start_fraction = start_fraction
        self.span_goal_switches = span_goal_switches
        if condition == 'goal' and any(e.desired_goals is None for e in episodes):
            raise ValueError('goal conditioning needs observations with achieved_goal and '
                             'desired_goal (a goal-env dataset such as PointMaze)')
        self.condition = condition
        self.returns_scale = returns_scale
        if normalizers is None:
            normalizers = {
                STATES: Normalizer.fit(np.concatenate([e.observations for e in episodes])),
                ACTIONS: Normalizer.fit(np.concatenate([e.actions for e in episodes])),
            }
            if condition == 'goal':
                normalizers['goals'] = Normalizer.fit(
                    np.concatenate([e.achieved_goals for e in episodes]))
        self.normalizers = normalizers
        norm_s, norm_a = normalizers[STATES], normalizers[ACTIONS]
        self.states = [norm_s.normalize(e.observations).astype(np.float32) for e in episodes]
        self.actions = [norm_a.normalize(e.actions).astype(np.float32) for e in episodes]
        if condition == 'goal':
            self.achieved = [e.achieved_goals for e in episodes]
            self.reward_range = (0.0, 1.0)
        else:
            self.rewards = [np.asarray(e.rewards, dtype=np.float64) for e in episodes]
            every = np.concatenate(self.rewards)
            self.reward_range = (float(every.min()), float(every.max()))
        if condition == 'goal':
            self.goals = [normalizers['goals'].normalize(e.achieved_goals).astype(np.float32)
                          for e in episodes]
            self.segment_ends = [segment_ends(e.desired_goals) for e in episodes]
        else:
            self.returns = [(returns_to_go(e.rewards, discount) / returns_scale)
                            .astype(np.float32)[:, None] for e in episodes]
        self._starts: dict[tuple, np.ndarray] = {}

    @property
    def obs_dim(self) -> int:
        """State size."""
        return self.states[0].shape[1]

    @property
    def action_dim(self) -> int:
        """Action size."""
        return self.actions[0].shape[1]

    @property
    def cond_dim(self) -> int:
        """Condition size: the goal's size, or 1 for returns-to-go."""
        return self.goals[0].shape[1] if self.condition == 'goal' else 1

    @property
    def num_transitions(self) -> int:
        """Transitions in the dataset."""
        return sum(len(a) for a in self.actions)

    def window_starts(self, length: int, with_actions: bool = False) -> np.ndarray:
        """(episode, start) pairs of every valid window of ``length`` states.

        with_actions keeps only windows whose every state has a recorded action after it.
        """
        key = (length, with_actions)
        if key not in self._starts:
            pairs = []
            for index, states in enumerate(self.states):
                last = len(self.actions[index]) if with_actions else len(states)
                starts = np.arange(last - length + 1)
                if self.condition == 'goal' and len(starts) and not self.span_goal_switches:
                    # The whole window must pursue one goal.
                    starts = starts[starts + length - 1 <= self.segment_ends[index][starts]]
                pairs.append(np.stack([np.full(len(starts), index), starts], axis=1))
            pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
            if len(pairs) == 0:
                raise ValueError(f'no window of {length} states fits in the dataset; use a '
                                 'shorter horizon/history or longer episodes')
            self._starts[key] = pairs
        return self._starts[key]

    def _episode_start_windows(self, length: int, with_actions: bool) -> np.ndarray:
        """Return the (episode, 0) pairs among window_starts(length, with_actions), kept once."""
        key = ('first', length, with_actions)
        if key not in self._starts:
            pairs = self.window_starts(length, with_actions)
            firsts = pairs[pairs[:, 1] == 0]
            if len(firsts) == 0:
                raise ValueError(f'no window of {length} states begins at an episode start; '
                                 'set data.start_fraction to 0')
            self._starts[key] = firsts
        return self._starts[key]

    def sample_windows(self, rng: np.random.Generator, batch_size: int, length: int,
                       with_actions: bool = False) -> dict[str, torch.Tensor]:
        """Windows of ``length`` states and the condition at each of them.

        with_actions adds the action after each state and the reward of each step. With a
        start_fraction, that share of the batch (rounded) begins at an episode's first state.
        """
        pairs = self.window_starts(length, with_actions)
        from_start = round(self.start_fraction * batch_size)
        chosen = pairs[rng.integers(0, len(pairs), size=batch_size - from_start)]
        if from_start:
            firsts = self._episode_start_windows(length, with_actions)
            picks = rng.integers(0, len(firsts), size=from_start)
            chosen = np.concatenate([chosen, firsts[picks]])
        states, conditions, actions, rewards = [], [], [], []
        for index, start in chosen:
            window = slice(start, start + length)
            states.append(self.states[index][window])
            if self.condition == 'goal':
                # A goal reached at or after the window's end, in its last state's segment
                # (the window's only segment unless windows span goal switches).
                end = start + length - 1
                target = rng.integers(end, self.segment_ends[index][end] + 1)
                goal = self.goals[index][target]
                conditions.append(np.broadcast_to(goal, (length, goal.shape[0])))
                if with_actions:
                    rewards.append(dense_goal_reward(self.achieved[index][window],
                                                     self.achieved[index][target]))
            else:
                conditions.append(self.returns[index][window])
                if with_actions:
                    rewards.append(self.rewards[index][window])
            if with_actions:
                actions.append(self.actions[index][window])
        batch = {
            STATES: torch.from_numpy(np.stack(states)),          # (B, length, obs_dim)
            CONDITIONS: torch.from_numpy(np.stack(conditions)),  # (B, length, cond_dim)
        }
        if with_actions:
            batch[ACTIONS] = torch.from_numpy(np.stack(actions))  # (B, length, action_dim)
            batch[REWARDS] = torch.from_numpy(np.stack(rewards).astype(np.float32))  # (B, length)
        return batch

    def sample_transitions(self, rng: np.random.Generator,
                           batch_size: int) -> dict[str, torch.Tensor]:
        """(s_t, a_t, s_t+1) triples for the inverse dynamics."""
        pairs = self._transition_pairs()
        chosen = pairs[rng.integers(0, len(pairs), size=batch_size)]
        return {
            STATES: torch.from_numpy(np.stack([self.states[i][t] for i, t in chosen])),
            ACTIONS: torch.from_numpy(np.stack([self.actions[i][t] for i, t in chosen])),
            NEXT_STATES: torch.from_numpy(np.stack([self.states[i][t + 1] for i, t in chosen])),
        }

    def _transition_pairs(self) -> np.ndarray:
        # Every transition counts for the dynamics, goal switches included.
        if -1 not in self._starts:
            self._starts[-1] = np.concatenate([
                np.stack([np.full(len(a), i), np.arange(len(a))], axis=1)
                for i, a in enumerate(self.actions)])
        return self._starts[-1]

    def reward_weights(self, rewards: torch.Tensor) -> torch.Tensor:
        """DMEMM Eq. 11 weights: a window's cumulative reward scaled into [0, 1].

        (sum_t r_t - H r_min) / (H (r_max - r_min)) over the dataset's reward range; with
        r_min = 0 (goal tasks) this is the paper's sum_t r_t / (T_max r_max). (B, H) -> (B,).
        """
        low, high = self.reward_range
        return ((rewards.mean(dim=1) - low) / max(high - low, 1e-8)).clamp(0.0, 1.0)
