"""Behavior policies and D4RL-style locomotion datasets.

D4RL made its locomotion data with SAC policies: 'medium' is about 1M steps of a policy stopped
at about a third of the expert's return, 'medium-replay' is the replay buffer that trained it up
to that point, and 'medium-expert' is medium plus 1M steps of the expert. This module keeps such
a policy as its SAC actor (ReLU layers, a Gaussian mean and log-std, tanh) in safetensors with a
JSON card beside it, so nothing is unpickled, and runs it in numpy to roll out datasets.
Training the policies needs stable-baselines3 (the ``data`` extra, data/sac.py); using them
does not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffusion_planner_ros.data.minari_io import (local_dataset_exists, validate_dataset_id,
                                                  write_dataset)
from diffusion_planner_ros.envs import make_env, resolve_env_id

POLICY_FORMAT = 'diffusion_planner_ros.behavior_policy'
# The actor's log-std is clamped to this range (as SAC does).
LOG_STD_RANGE = (-20.0, 2.0)
# Dataset kinds make_locomotion_dataset.py writes from policies (medium-replay comes from
# training, data/sac.py).
KINDS = ('random', 'medium', 'expert', 'medium-expert')


def policy_folder(root: str | Path, env_id: str, label: str) -> Path:
    """Where a kept policy lives: <root>/<env>-<label>, e.g. models/behavior/hopper-medium."""
    return Path(root) / f'{resolve_env_id(env_id).split("-")[0].lower()}-{label}'


def locomotion_dataset_id(env: str, kind: str, version: int = 0) -> str:
    """Name our locomotion dataset, e.g. dpr/hopper-medium-expert-v0 (env hopper or Hopper-v5)."""
    name = env.lower().rsplit('-v', 1)[0] if env[-1:].isdigit() and '-v' in env else env.lower()
    return f'dpr/{name}-{kind}-v{version}'


@dataclass
class PolicyCard:
    """What a kept policy is: its sizes, its env, and how it was made and measured."""

    env_id: str
    obs_dim: int
    action_dim: int
    hidden: list = field(default_factory=lambda: [256, 256])
    action_low: list = field(default_factory=list)
    action_high: list = field(default_factory=list)
    # 'medium' or 'expert' (D4RL's names), or a free label.
    label: str = ''
    # Mean return of the stochastic policy when it was kept, over eval_episodes episodes.
    eval_return: float = 0.0
    eval_episodes: int = 0
    # Environment steps of training when it was kept.
    train_steps: int = 0
    seed: int = 0
    # The command that made it.
    command: str = ''
    # Steps at which that run was stopped by hand (0: it ran to its end); the command with
    # --steps <stopped_at> reproduces the policy.
    stopped_at: int = 0

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.action_dim < 1 or not self.hidden:
            raise ValueError('a policy card needs obs_dim, action_dim >= 1 and hidden layers')
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(f'action bounds must have {self.action_dim} entries')
        if not all(low < high for low, high in zip(self.action_low, self.action_high)):
            raise ValueError('every action_low must be below its action_high')
        if self.stopped_at < 0:
            raise ValueError('stopped_at must be >= 0')


class BehaviorPolicy:
    """A SAC actor in numpy: observation -> tanh-squashed Gaussian action in the env's bounds.

    The weight names are stable-baselines3's (latent_pi.<i>, mu, log_std), so its actor's state
    dict is kept as it is.
    """

    def __init__(self, weights: dict[str, np.ndarray], card: PolicyCard):
        self.card = card
        self.weights = {name: np.asarray(value, dtype=np.float64)
                        for name, value in weights.items()}
        names = [f'latent_pi.{2 * index}' for index in range(len(card.hidden))]
        self.layers = [self._linear(name, fan_in, fan_out) for name, fan_in, fan_out
                       in zip(names, [card.obs_dim, *card.hidden], card.hidden)]
        self.mu = self._linear('mu', card.hidden[-1], card.action_dim)
        self.log_std = self._linear('log_std', card.hidden[-1], card.action_dim)
        extra = set(self.weights) - {f'{name}.{part}' for name in [*names, 'mu', 'log_std']
                                     for part in ('weight', 'bias')}
        if extra:
            raise ValueError(f'unexpected policy weights {sorted(extra)}')
        self.low = np.asarray(card.action_low, dtype=np.float64)
        self.high = np.asarray(card.action_high, dtype=np.float64)

    def _linear(self, name: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
        weight, bias = self.weights.get(f'{name}.weight'), self.weights.get(f'{name}.bias')
        if weight is None or bias is None:
            raise ValueError(f'policy weights lack {name}.weight or {name}.bias')
        if weight.shape != (fan_out, fan_in) or bias.shape != (fan_out,):
            raise ValueError(f'policy layer {name} is {weight.shape}, expected '
                             f'({fan_out}, {fan_in}) from the card')
        return weight, bias

    def act(self, observations: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Actions for observations (N, obs_dim): sampled with rng, the mean's tanh without."""
        x = np.asarray(observations, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.card.obs_dim:
            raise ValueError(f'policy for {self.card.env_id} takes (N, {self.card.obs_dim}) '
                             f'observations, got {x.shape}')
        for weight, bias in self.layers:
            x = np.maximum(x @ weight.T + bias, 0.0)
        mean = x @ self.mu[0].T + self.mu[1]
        if rng is not None:
            log_std = np.clip(x @ self.log_std[0].T + self.log_std[1], *LOG_STD_RANGE)
            mean = mean + np.exp(log_std) * rng.standard_normal(mean.shape)
        squashed = np.tanh(mean)  # in [-1, 1] -> the env's bounds
        return self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)

    def save(self, folder: str | Path) -> Path:
        """Write actor.safetensors and card.json into folder."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({name: value.astype(np.float32) for name, value in self.weights.items()},
                  str(folder / 'actor.safetensors'))
        card = {'format': POLICY_FORMAT, 'version': 1, **asdict(self.card)}
        (folder / 'card.json').write_text(json.dumps(card, indent=2) + '\n')
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BehaviorPolicy:
        """Read a policy folder written by save (safetensors + JSON only)."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        card_path, weights_path = folder / 'card.json', folder / 'actor.safetensors'
        if not card_path.is_file() or not weights_path.is_file():
            raise ValueError(f'{folder} is not a behavior policy (needs card.json and '
                             'actor.safetensors)')
        raw = json.loads(card_path.read_text())
        if raw.pop('format', None) != POLICY_FORMAT or raw.pop('version', None) != 1:
            raise ValueError(f'{card_path} is not a version-1 {POLICY_FORMAT} card')
        try:
            card = PolicyCard(**raw)
        except TypeError as error:
            raise ValueError(f'{card_path}: {error}') from error
        return cls(load_file(str(weights_path)), card)


def rollout_episodes(env_id: str, policy: BehaviorPolicy | None, total_steps: int, seed: int,
                     progress: bool = False, desc: str = '') -> list:
    """Run the policy (None: uniform random actions) for total_steps env steps in episodes.

    Actions are sampled from the policy's Gaussian (D4RL kept the stochastic policy's
    actions). Episode i resets with seed ``seed * 1_000_003 + i``; the last episode is cut
    (truncated) at total_steps. Deterministic for a seed. Returns Minari EpisodeBuffers.
    """
    env = make_env(env_id)
    act = action_source(env, policy, np.random.default_rng(seed))
    episodes, collected = [], 0
    with tqdm(total=total_steps, desc=desc or f'rollout {env.spec.id}', unit='step',
              disable=not progress) as bar:
        while collected < total_steps:
            episode_seed = seed * 1_000_003 + len(episodes)
            observation, _ = env.reset(seed=episode_seed)
            observations, actions, rewards = [observation], [], []
            terminations, truncations = [], []
            done = False
            while not done and collected < total_steps:
                action = act(observation)
                observation, reward, terminated, truncated, _ = env.step(
                    action.astype(np.float32))
                collected += 1
                truncated = truncated or collected == total_steps
                observations.append(observation)
                actions.append(action)
                rewards.append(reward)
                terminations.append(terminated)
                truncations.append(truncated and not terminated)
                done = terminated or truncated
            bar.update(len(actions))
            episodes.append(_buffer(len(episodes), episode_seed, observations, actions, rewards,
                                    terminations, truncations))
    env.close()
    return episodes


def action_source(env, policy: BehaviorPolicy | None, rng: np.random.Generator):
    """Observation -> action: the policy's sample, or uniform in the env's bounds for None."""
    if policy is None:
        low = env.action_space.low.astype(np.float64)
        high = env.action_space.high.astype(np.float64)
        return lambda observation: rng.uniform(low, high)
    if policy.card.env_id != env.spec.id:
        raise ValueError(f'policy was trained on {policy.card.env_id}, not {env.spec.id}')
    return lambda observation: policy.act(observation[None], rng)[0]


def run_episodes(env_id: str, policy: BehaviorPolicy | None, episodes: int,
                 seed: int) -> np.ndarray:
    """Return the returns of whole episodes (reset seeds seed, seed + 1, ...), actions sampled."""
    env = make_env(env_id)
    act = action_source(env, policy, np.random.default_rng(seed))
    returns = np.zeros(episodes)
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(
                act(observation).astype(np.float32))
            returns[episode] += reward
            done = terminated or truncated
    env.close()
    return returns


def _buffer(episode_id: int, seed: int | None, observations, actions, rewards, terminations,
            truncations):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    return EpisodeBuffer(id=episode_id, seed=seed,
                         observations=np.asarray(observations, dtype=np.float64),
                         actions=np.asarray(actions, dtype=np.float32),
                         rewards=np.asarray(rewards, dtype=np.float64),
                         terminations=np.asarray(terminations, dtype=bool),
                         truncations=np.asarray(truncations, dtype=bool))


def replay_episodes(observations: np.ndarray, next_observations: np.ndarray,
                    actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
                    timeouts: np.ndarray) -> list:
    """Cut a replay buffer's transitions (in the order they were collected) into episodes.

    Arrays are (N, dim) or (N,); an episode ends at a done (a termination, or a truncation
    where timeouts is set) and the buffer's last, unfinished episode ends truncated.
    """
    count = len(actions)
    if count == 0:
        raise ValueError('the replay buffer is empty')
    if any(len(array) != count for array in (observations, next_observations, rewards, dones,
                                             timeouts)):
        raise ValueError('replay buffer arrays differ in length')
    ends = list(np.flatnonzero(dones)) + ([count - 1] if not dones[-1] else [])
    episodes, start = [], 0
    for end in ends:
        steps = slice(start, end + 1)
        terminations = np.asarray(dones[steps], dtype=bool) & ~np.asarray(timeouts[steps], bool)
        truncations = np.zeros(end + 1 - start, dtype=bool)
        truncations[-1] = not terminations[-1]
        # (T, dim) states plus the final next state -> (T + 1, dim)
        states = np.concatenate([observations[steps], next_observations[end:end + 1]])
        episodes.append(_buffer(len(episodes), None, states, actions[steps], rewards[steps],
                                terminations, truncations))
        start = end + 1
    return episodes


def write_locomotion_dataset(dataset_id: str, env_id: str, episodes: list, algorithm: str,
                             description: str):
    """Write episode buffers as a Minari dataset for a locomotion env (refuses an existing id).

    Episodes are numbered in the given order (parts rolled out separately restart at 0).
    """
    import dataclasses

    import gymnasium as gym

    validate_dataset_id(dataset_id)
    episodes = [dataclasses.replace(episode, id=index) for index, episode in enumerate(episodes)]
    spec = gym.spec(resolve_env_id(env_id))
    return write_dataset(dataset_id, episodes, env=spec, eval_env=spec,
                         algorithm_name=algorithm, description=description,
                         code_permalink='training/make_locomotion_dataset.py and '
                                        'training/train_behavior.py in diffusion_planner_ros')


def kind_policies(env_id: str, kind: str, policies_root: str | Path) -> list:
    """Load the policies one dataset kind rolls out, in order (None = uniform random actions)."""
    if kind not in KINDS:
        raise ValueError(f'dataset kind {kind!r} must be one of {KINDS}')
    env_id = resolve_env_id(env_id)
    labels = {'random': [], 'medium': ['medium'], 'expert': ['expert'],
              'medium-expert': ['medium', 'expert']}[kind]
    policies = []
    for label in labels:
        folder = policy_folder(policies_root, env_id, label)
        try:
            policy = BehaviorPolicy.load(folder)
        except ValueError as error:
            raise ValueError(f'{error} (make it with training/train_behavior.py)') from None
        if policy.card.env_id != env_id:
            raise ValueError(f'{folder} was trained on {policy.card.env_id}, not {env_id}')
        policies.append(policy)
    return policies or [None]


def make_locomotion_dataset(env_id: str, kind: str, steps: int, seed: int,
                            policies_root: str | Path, dataset_id: str = '',
                            progress: bool = True) -> dict:
    """Roll out a kind's policies (steps each, seed + part) and write the dataset (D4RL recipe).

    medium-expert is medium with ``seed`` followed by expert with ``seed + 1``, as D4RL joined
    its medium and expert data. Returns the id, episode and step counts and the returns.
    """
    dataset_id = dataset_id or locomotion_dataset_id(env_id, kind)
    env_id = resolve_env_id(env_id)
    validate_dataset_id(dataset_id)
    if local_dataset_exists(dataset_id):
        raise ValueError(f'dataset {dataset_id} already exists; delete it first')
    if steps < 1:
        raise ValueError('steps must be >= 1')
    policies = kind_policies(env_id, kind, policies_root)
    episodes = []
    for part, policy in enumerate(policies):
        label = policy.card.label if policy else 'random'
        episodes += rollout_episodes(env_id, policy, steps, seed + part, progress=progress,
                                     desc=label)
    sources = ', '.join(f'{policy.card.label} (eval return {policy.card.eval_return:.1f})'
                        if policy else 'random actions' for policy in policies)
    write_locomotion_dataset(dataset_id, env_id, episodes, f'SAC-{kind}',
                             f'{kind} data for {env_id}: {steps} steps each of {sources}, '
                             f'seed {seed}.')
    returns = episode_returns(episodes)
    return {'dataset_id': dataset_id, 'episodes': len(episodes),
            'steps': sum(len(episode.actions) for episode in episodes),
            'return_mean': float(returns.mean()), 'return_std': float(returns.std())}


def episode_returns(episodes: list) -> np.ndarray:
    """Undiscounted return of each episode buffer."""
    return np.array([float(np.sum(episode.rewards)) for episode in episodes])
