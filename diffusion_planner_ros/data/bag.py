"""ROS 2 bags (MCAP or sqlite3) to Minari datasets, read with the pure-Python rosbags library.

A bag records what a robot did: sensor_msgs/JointState on the state topic and
std_msgs/Float64MultiArray on the command topic (ros2_control's forward controllers), and
optionally a goal (geometry_msgs/PoseStamped), a per-step reward (std_msgs/Float64) and a reset
topic (any type: each message starts a new episode). Converting it:

1. Read the messages of those topics and stamp each one: by default with its receive time in
   the bag (one clock for every topic; Float64MultiArray has no header), or with the
   JointState header stamp. Sort by stamp, so messages stored out of order land in place.
2. Lay a grid of ticks one control period apart from the first state, starting again at the
   first state after each reset and each gap, so every episode begins on its own first state.
   The observation at a tick interpolates linearly between the states on either side of it;
   the action of the step that starts there is the command in effect half a period later (the
   one the robot held over most of the step); its reward is the sum of the reward messages
   inside the step.
3. A step counts when both its ticks have states on either side no more than ``gap_s`` apart,
   a command no older than ``gap_s`` is in effect, the goal is known (goal datasets) and no
   reset falls inside it. Episodes are the runs of consecutive steps that count, so a gap or a
   reset ends one.
4. Check everything, then write the dataset; a write that fails removes what it left, so a
   partial dataset never sits under the requested id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_planner_ros.data.minari_io import (
    local_dataset_exists, validate_dataset_id, write_dataset)
from diffusion_planner_ros.robots import RobotProfile

LOG = logging.getLogger(__name__)

STATE_TYPE = 'sensor_msgs/msg/JointState'
COMMAND_TYPE = 'std_msgs/msg/Float64MultiArray'
GOAL_TYPE = 'geometry_msgs/msg/PoseStamped'
REWARD_TYPE = 'std_msgs/msg/Float64'


@dataclass
class BagConversionConfig:
    """Which topics to read and how to cut the recording into control steps."""

    state_topic: str = '/joint_states'
    command_topic: str = '/effort_controller/commands'
    # PoseStamped goal (x, y); '' means the dataset has no goal (flat observations).
    goal_topic: str = ''
    # Float64 rewards, summed per step; used when the bag has the topic, else rewards are 0.
    reward_topic: str = '/reward'
    # Every message on this topic (any type) starts a new episode; '' means none.
    reset_topic: str = ''
    # Control period of the dataset (s); 0 takes the profile's control_period_s.
    period_s: float = 0.0
    # Longest wait between two states, or since the last command, inside an episode (s);
    # 0 means five control periods.
    gap_s: float = 0.0
    # 'receive' (the bag's time for every topic) or 'header' (JointState header stamps).
    state_stamps: str = 'receive'
    # Observation dimensions the goal refers to (the dataset's achieved_goal).
    goal_dims: tuple = (0, 1)
    # Episodes with fewer steps are an error, or are dropped with skip_short.
    min_steps: int = 1
    skip_short: bool = False

    def __post_init__(self) -> None:
        if self.state_stamps not in ('receive', 'header'):
            raise ValueError(f"state_stamps must be 'receive' or 'header', got "
                             f'{self.state_stamps!r}')
        if self.period_s < 0 or self.gap_s < 0 or self.min_steps < 1:
            raise ValueError('period_s and gap_s must be >= 0 and min_steps >= 1')
        if not self.state_topic or not self.command_topic:
            raise ValueError('the state and command topics must be named')
        self.goal_dims = tuple(int(d) for d in self.goal_dims)


@dataclass
class Recording:
    """A bag's messages as time-sorted arrays (seconds from the bag's start)."""

    state_t: np.ndarray                 # (N,)
    states: np.ndarray                  # (N, obs_dim)
    command_t: np.ndarray               # (M,)
    commands: np.ndarray                # (M, action_dim)
    goal_t: np.ndarray | None = None    # (G,)
    goals: np.ndarray | None = None     # (G, 2)
    reward_t: np.ndarray | None = None  # (R,)
    rewards: np.ndarray | None = None   # (R,)
    reset_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    start_ns: int = 0


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def read_bag(path: str | Path, profile: RobotProfile,
             config: BagConversionConfig) -> Recording:
    """Read and check the topics the conversion needs; ValueError names what is wrong."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise ValueError(f'bag {path} does not exist')
    wanted = {config.state_topic: STATE_TYPE, config.command_topic: COMMAND_TYPE}
    if config.goal_topic:
        wanted[config.goal_topic] = GOAL_TYPE
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except Exception as error:  # noqa: BLE001 - rosbags raises its own types per storage
        raise ValueError(f'cannot read bag {path}: {error}') from error
    try:
        present = {}
        for connection in reader.connections:
            present.setdefault(connection.topic, set()).add(connection.msgtype)
        mixed = {topic: sorted(types) for topic, types in present.items()
                 if len(types) > 1 and topic in {*wanted, config.reward_topic,
                                                 config.reset_topic}}
        if mixed:
            topic, types = next(iter(mixed.items()))
            raise ValueError(f'topic {topic} in bag {path} carries more than one message type '
                             f'({", ".join(types)}): record one type per topic')
        present = {topic: types.pop() for topic, types in present.items()}
        for topic, msgtype in wanted.items():
            if topic not in present:
                raise ValueError(f'bag {path} has no topic {topic} (it has '
                                 f'{sorted(present)}); name the topic with the options')
            if present[topic] != msgtype:
                raise ValueError(f'topic {topic} in bag {path} carries {present[topic]}, '
                                 f'expected {msgtype}')
        if config.reward_topic in present:
            if present[config.reward_topic] != REWARD_TYPE:
                raise ValueError(f'topic {config.reward_topic} carries '
                                 f'{present[config.reward_topic]}, expected {REWARD_TYPE}')
            wanted[config.reward_topic] = REWARD_TYPE
        else:
            LOG.warning('bag %s has no reward topic %s: rewards are written as 0', path,
                        config.reward_topic)
        if config.reset_topic:
            if config.reset_topic not in present:
                raise ValueError(f'bag {path} has no reset topic {config.reset_topic} (it has '
                                 f'{sorted(present)})')
        columns = {topic: ([], []) for topic in wanted}
        resets = []
        connections = [c for c in reader.connections
                       if c.topic in wanted or c.topic == config.reset_topic]
        for connection, received, raw in reader.messages(connections=connections):
            if connection.topic == config.reset_topic:
                # Only the time of a reset matters, whatever its type.
                resets.append(received)
                if connection.topic not in wanted:
                    continue
            msg = reader.deserialize(raw, connection.msgtype)
            times, values = columns[connection.topic]
            if connection.topic == config.state_topic:
                stamp = _stamp(msg) if config.state_stamps == 'header' else received
                values.append(_observation(profile, msg, stamp, config.state_topic))
                times.append(stamp)
                continue
            times.append(received)
            if connection.topic == config.command_topic:
                values.append(_command(profile, msg, received, config.command_topic))
            elif connection.topic == config.goal_topic:
                values.append([msg.pose.position.x, msg.pose.position.y])
            elif connection.topic == config.reward_topic:
                values.append(float(msg.data))
    finally:
        reader.close()
    return _recording(columns, resets, config, path)


def _observation(profile: RobotProfile, msg, stamp: int, topic: str) -> np.ndarray:
    try:
        return profile.observation_from_joint_state(msg.name, msg.position, msg.velocity)
    except ValueError as error:
        raise ValueError(f'{topic} at stamp {stamp} ns: {error}; the bag does not match '
                         f'profile {profile.name!r}') from error


def _command(profile: RobotProfile, msg, stamp: int, topic: str) -> np.ndarray:
    values = np.asarray(msg.data, dtype=np.float64)
    if values.shape != (len(profile.actuators),):
        raise ValueError(f'{topic} at {stamp} ns has {values.size} values but profile '
                         f'{profile.name!r} has {len(profile.actuators)} actuators '
                         f'{profile.actuators}: the bag does not match the profile')
    if not np.all(np.isfinite(values)):
        raise ValueError(f'{topic} at {stamp} ns has NaN or inf: {values.tolist()}')
    return values


def _recording(columns: dict, resets: list, config: BagConversionConfig,
               path: Path) -> Recording:
    """Sort each topic by stamp and put every time on one axis (seconds from the start)."""
    for topic in (config.state_topic, config.command_topic, config.goal_topic):
        if topic and not columns[topic][0]:
            raise ValueError(f'topic {topic} in bag {path} has no messages')
    start = min(min(times) for times in [*(t for t, _ in columns.values()), resets] if times)

    def sorted_column(topic: str) -> tuple[np.ndarray, np.ndarray]:
        times, values = columns[topic]
        order = np.argsort(np.asarray(times, dtype=np.int64), kind='stable')
        seconds = (np.asarray(times, dtype=np.int64)[order] - start) * 1e-9
        return seconds, np.asarray(values, dtype=np.float64)[order]

    state_t, states = sorted_column(config.state_topic)
    command_t, commands = sorted_column(config.command_topic)
    recording = Recording(state_t, states, command_t, commands, start_ns=start)
    if config.state_stamps == 'header':
        # Header stamps on another clock (sim time, a robot's own clock) cannot be lined up
        # with the commands' receive times.
        received = np.sort((np.asarray(columns[config.command_topic][0]) - start) * 1e-9)
        if abs(np.median(state_t) - np.median(received)) > 1.0:
            raise ValueError(f'JointState header stamps on {config.state_topic} are more than '
                             f'1 s away from the bag times of {config.command_topic}: they run '
                             f"on another clock; use state_stamps='receive'")
    if not np.all(np.isfinite(states)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(states), axis=1))[0])
        raise ValueError(f'{config.state_topic} has NaN or inf at {state_t[bad]:.3f} s')
    if config.goal_topic:
        recording.goal_t, recording.goals = sorted_column(config.goal_topic)
    if config.reward_topic in columns:
        recording.reward_t, recording.rewards = sorted_column(config.reward_topic)
    recording.reset_t = np.sort((np.asarray(resets, dtype=np.int64) - start) * 1e-9)
    return recording


@dataclass
class Segment:
    """One episode on the tick grid: T steps, T + 1 observations."""

    ticks: np.ndarray         # (T + 1,) seconds
    observations: np.ndarray  # (T + 1, obs_dim)
    actions: np.ndarray       # (T, action_dim)
    rewards: np.ndarray       # (T,)
    goals: np.ndarray | None  # (T + 1, 2)


def _latest(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Index of the last time <= each of ``at`` (-1 where there is none)."""
    return np.searchsorted(times, at, side='right') - 1


def _grid(state_t: np.ndarray, reset_t: np.ndarray, period: float,
          gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Ticks one period apart, restarting at the first state after each reset or gap.

    Returns the ticks and, per tick, the index of its block: a step joins two ticks of one
    block, so each episode starts on its own first state whatever its stamps.
    """
    epoch = np.searchsorted(reset_t, state_t, side='right')
    first = np.ones(len(state_t), dtype=bool)
    first[1:] = (epoch[1:] != epoch[:-1]) | (np.diff(state_t) > gap)
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(state_t)) - 1
    ticks, block = [], []
    for index, (a, b) in enumerate(zip(starts, ends)):
        count = int((state_t[b] - state_t[a]) / period + 1e-9) + 1
        ticks.append(state_t[a] + period * np.arange(count))
        block.append(np.full(count, index))
    return np.concatenate(ticks), np.concatenate(block)


def segment(recording: Recording, config: BagConversionConfig, period: float,
            gap: float) -> list[Segment]:
    """Resample the recording on the control-period grid and cut it into episodes."""
    r = recording
    ticks, block = _grid(r.state_t, r.reset_t, period, gap)
    # Observations: linear interpolation between the states on either side of each tick.
    before = _latest(r.state_t, ticks + 1e-9)
    after = np.minimum(before + 1, len(r.state_t) - 1)
    t0, t1 = r.state_t[before], r.state_t[after]
    span = np.where(t1 > t0, t1 - t0, 1.0)
    weight = np.clip((ticks - t0) / span, 0.0, 1.0)[:, None]
    observations = (1.0 - weight) * r.states[before] + weight * r.states[after]
    on_a_state = np.abs(ticks - t0) < 1e-6
    tick_ok = (before >= 0) & (on_a_state | ((after > before) & (t1 - t0 <= gap)))
    # Resets: a tick belongs to the episode of the last reset at or before it; the states it
    # interpolates between must belong to the same one.
    epoch = np.searchsorted(r.reset_t, ticks, side='right')
    epoch_after = np.searchsorted(r.reset_t, np.where(on_a_state, t0, t1), side='right')
    tick_ok &= np.searchsorted(r.reset_t, t0, side='right') == epoch
    tick_ok &= epoch_after == epoch
    goals = None
    if r.goal_t is not None:
        goal_index = _latest(r.goal_t, ticks + 1e-9)
        tick_ok &= goal_index >= 0
        goals = r.goals[np.maximum(goal_index, 0)]
    # Actions: the command in effect half a period into each step.
    middle = ticks[:-1] + 0.5 * period
    command = _latest(r.command_t, middle)
    step_ok = (tick_ok[:-1] & tick_ok[1:] & (block[:-1] == block[1:]) & (command >= 0)
               & (middle - r.command_t[np.maximum(command, 0)] <= gap))
    actions = r.commands[np.maximum(command, 0)]
    rewards = np.zeros(len(middle))
    if r.reward_t is not None and len(r.reward_t):
        # Sum of the reward messages in (tick k, tick k + 1].
        cumulative = np.concatenate([[0.0], np.cumsum(r.rewards)])
        upto = np.searchsorted(r.reward_t, ticks + 1e-9, side='right')
        rewards = cumulative[upto[1:]] - cumulative[upto[:-1]]
    segments, start = [], None
    for k in range(len(step_ok) + 1):
        inside = k < len(step_ok) and step_ok[k]
        if inside and start is None:
            start = k
        elif not inside and start is not None:
            cut = slice(start, k + 1)  # ticks start..k, steps start..k-1
            segments.append(Segment(ticks[cut], observations[cut], actions[start:k],
                                    rewards[start:k], None if goals is None else goals[cut]))
            start = None
    return segments


def check_segments(segments: list[Segment], recording: Recording,
                   config: BagConversionConfig) -> list[Segment]:
    """Apply min_steps and make sure every reset period gave an episode; errors name them."""
    short = [s for s in segments if len(s.actions) < config.min_steps]
    kept = [s for s in segments if len(s.actions) >= config.min_steps]
    problems = [f'the episode from {s.ticks[0]:.3f} to {s.ticks[-1]:.3f} s into the bag has '
                f'{len(s.actions)} step(s), fewer than min_steps {config.min_steps}'
                for s in short]
    bounds = np.concatenate([[-np.inf], recording.reset_t, [np.inf]])
    for index in range(len(bounds) - 1):
        low, high = bounds[index], bounds[index + 1]
        has_states = np.any((recording.state_t >= low) & (recording.state_t < high))
        covered = any(low <= s.ticks[0] < high for s in segments)
        if has_states and not covered:
            problems.append(f'the episode that starts {max(low, 0.0):.3f} s into the bag '
                            f'(after reset {index}) has no complete control step: it is empty')
    if problems and not config.skip_short:
        raise ValueError('; '.join(problems) + ' (skip_short drops such episodes)')
    for problem in problems:
        LOG.warning('dropped: %s', problem)
    if not kept:
        raise ValueError('the bag has no complete control step: every state needs a command '
                         'in effect and a neighbouring state within the gap')
    return kept


def episode_buffers(segments: list[Segment], config: BagConversionConfig) -> list:
    """Minari episode buffers, dict observations when the dataset has a goal."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = []
    for index, s in enumerate(segments):
        steps = len(s.actions)
        observations = s.observations.astype(np.float64)
        if s.goals is not None:
            observations = {'observation': observations,
                            'achieved_goal': observations[:, list(config.goal_dims)],
                            'desired_goal': s.goals.astype(np.float64)}
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(
            id=index, observations=observations, actions=s.actions.astype(np.float32),
            rewards=s.rewards.astype(np.float64), terminations=np.zeros(steps, dtype=bool),
            truncations=truncations))
    return buffers


def _spaces(profile: RobotProfile, segments: list[Segment], config: BagConversionConfig):
    """Return the profile's env spec when gymnasium knows its env, else spaces from the data."""
    import gymnasium as gym

    from diffusion_planner_ros.envs import register_envs
    register_envs()
    try:
        spec = gym.spec(profile.env_id) if profile.env_id else None
    except gym.error.Error:
        spec = None
    if spec is not None:
        return {'env': spec, 'eval_env': spec}
    obs_dim = segments[0].observations.shape[1]
    box = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
    if segments[0].goals is not None:
        goal = gym.spaces.Box(-np.inf, np.inf, (len(config.goal_dims),), np.float64)
        box = gym.spaces.Dict({'observation': box, 'achieved_goal': goal, 'desired_goal': goal})
    actions = np.concatenate([s.actions for s in segments])
    return {'observation_space': box,
            'action_space': gym.spaces.Box(actions.min(0), actions.max(0), dtype=np.float32)}


def convert_bag(bag: str | Path, profile: RobotProfile, dataset_id: str,
                config: BagConversionConfig | None = None) -> dict:
    """Convert a bag into the local Minari dataset ``dataset_id``; returns a summary."""
    config = config or BagConversionConfig()
    validate_dataset_id(dataset_id)
    if local_dataset_exists(dataset_id):
        raise ValueError(f'dataset {dataset_id} already exists; delete it first '
                         f'(minari delete {dataset_id}) or choose another id')
    period = config.period_s or profile.control_period_s
    if period <= 0:
        raise ValueError(f'profile {profile.name!r} has no control_period_s: pass the period')
    gap = config.gap_s or 5.0 * period
    if gap < period:
        raise ValueError(f'gap_s {gap} must be at least one control period ({period} s)')
    if config.goal_topic and max(config.goal_dims) >= len(profile.observation):
        raise ValueError(f'goal_dims {config.goal_dims} exceed the profile\'s '
                         f'{len(profile.observation)} observation dimensions')
    recording = read_bag(bag, profile, config)
    segments = check_segments(segment(recording, config, period, gap), recording, config)
    buffers = episode_buffers(segments, config)
    write_dataset(
        dataset_id, buffers, **_spaces(profile, segments, config), algorithm_name='ros2-bag',
        code_permalink='training/bag_to_minari.py in the diffusion_planner_ros repository',
        description=(f'Converted from the ROS 2 bag {Path(bag).name} with profile '
                     f'{profile.name}: states {config.state_topic}, commands '
                     f'{config.command_topic}, period {period} s.'))
    return {'dataset_id': dataset_id, 'episodes': len(buffers),
            'steps': int(sum(len(s.actions) for s in segments)), 'period_s': period,
            'gap_s': gap, 'states': len(recording.state_t),
            'commands': len(recording.command_t),
            'rewards': 0 if recording.reward_t is None else len(recording.reward_t)}
