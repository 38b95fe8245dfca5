"""Robot profiles: which joint fields form the model's observation, which joints take commands.

Joints are always looked up by name, never by position in a message, so a real driver that
publishes its joints in another order, or more joints, drops in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from diffusion_planner_ros.share import share_directory

FIELDS = ('position', 'velocity')


@dataclass(frozen=True)
class ObservationEntry:
    """One observation dimension: a joint's position or velocity."""

    joint: str
    field: str
    # Clip the value to [-clip, clip] as the env's observation does (gymnasium's Hopper and
    # Walker2d clip velocities to 10); 0 leaves it as it is.
    clip: float = 0.0

    def __post_init__(self) -> None:
        if self.field not in FIELDS:
            raise ValueError(f'observation field {self.field!r} of joint {self.joint!r} must be '
                             f'one of {FIELDS}')
        if not self.clip >= 0.0:
            raise ValueError(f'observation clip of joint {self.joint!r} must be >= 0, got '
                             f'{self.clip}')


@dataclass
class RobotProfile:
    """How a robot's joints map onto a bundle's observation and action vectors.

    Only the joints are required. A simulated robot names its gymnasium env (the sim bridge
    runs it, the planner reads the maze map and the kinematics from it); a real robot may give
    a MuJoCo model file for the kinematics of its plan drawings and a maze map for its goals,
    or neither: then plans are drawn from their planned joint positions and goals are not
    checked against a map.
    """

    name: str
    # gymnasium env the sim bridge runs for this robot ('' for a robot without a simulator).
    env_id: str = ''
    # Observation entries in the model's order.
    observation: list = field(default_factory=list)
    # Joints that take commands, in the command vector's order.
    actuators: list = field(default_factory=list)
    # Body whose position the plan Path shows (MuJoCo forward kinematics).
    plan_body: str = ''
    # REP 105 frame of plans, markers and goals.
    fixed_frame: str = 'map'
    # Control period of the robot's datasets (s): bag_to_minari resamples bags onto it.
    control_period_s: float = 0.0
    # Without env_id: a MuJoCo model (MJCF, or URDF that MuJoCo reads) for the kinematics of
    # the plan drawings, relative to the profile file; '' draws planned joint positions.
    model_file: str = ''
    # Without env_id: the maze of a goal-conditioned robot, rows of 1 (wall) and 0 (free) as
    # gymnasium-robotics writes it, and the size of a cell (m); goals in walls are dropped.
    maze_map: list = field(default_factory=list)
    maze_cell_m: float = 1.0

    def __post_init__(self) -> None:
        self.observation = [e if isinstance(e, ObservationEntry) else ObservationEntry(**e)
                            for e in self.observation]
        if not self.observation or not self.actuators:
            raise ValueError(f'profile {self.name!r} needs observation entries and actuators')
        if not self.control_period_s >= 0:
            raise ValueError(f'profile {self.name!r}: control_period_s must be >= 0, got '
                             f'{self.control_period_s}')
        if self.env_id and (self.model_file or self.maze_map):
            raise ValueError(f'profile {self.name!r}: model_file and maze_map are for robots '
                             f'without env_id; env {self.env_id!r} gives both')
        if self.maze_map and (not all(isinstance(row, list) and row for row in self.maze_map)
                              or len({len(row) for row in self.maze_map}) != 1):
            raise ValueError(f'profile {self.name!r}: maze_map must be rows of equal length')
        if not self.maze_cell_m > 0:
            raise ValueError(f'profile {self.name!r}: maze_cell_m must be > 0')

    def to_dict(self) -> dict:
        """Return the profile as its YAML keys (what a bundle records of its robot)."""
        raw = {key: getattr(self, key) for key in PROFILE_KEYS}
        raw['observation'] = [{'joint': e.joint, 'field': e.field, 'clip': e.clip}
                              for e in self.observation]
        raw['actuators'] = list(self.actuators)
        return raw

    @property
    def joints(self) -> list[str]:
        """Every joint the observation reads, in first-use order."""
        return list(dict.fromkeys(e.joint for e in self.observation))

    def observation_from_joint_state(self, names: Sequence[str], positions: Sequence[float],
                                     velocities: Sequence[float]) -> np.ndarray:
        """Build the observation vector from JointState fields; ValueError names the problem."""
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate joint names in JointState: {names}')
        if len(positions) != len(names):
            raise ValueError(f'JointState has {len(names)} names but {len(positions)} positions')
        needs_velocity = any(e.field == 'velocity' for e in self.observation)
        if needs_velocity and len(velocities) != len(names):
            raise ValueError(f'JointState has {len(names)} names but {len(velocities)} '
                             'velocities')
        index = {name: i for i, name in enumerate(names)}
        missing = [joint for joint in self.joints if joint not in index]
        if missing:
            raise ValueError(f'JointState lacks joint(s) {missing} of profile {self.name!r}')
        values = np.array([(positions if e.field == 'position' else velocities)[index[e.joint]]
                           for e in self.observation], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f'JointState has NaN or inf in profile joints: {values.tolist()}')
        clip = np.array([e.clip or np.inf for e in self.observation])
        return np.clip(values, -clip, clip)

    def joint_state_from_mujoco(self, model, data) -> tuple[list, list, list]:
        """Names, positions and velocities of the profile's joints in a MuJoCo state."""
        import mujoco

        names, positions, velocities = [], [], []
        for joint in self.joints:
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
            if jid < 0:
                raise ValueError(f'MuJoCo model has no joint {joint!r} (profile {self.name!r})')
            names.append(joint)
            positions.append(float(data.qpos[model.jnt_qposadr[jid]]))
            velocities.append(float(data.qvel[model.jnt_dofadr[jid]]))
        return names, positions, velocities


PROFILE_KEYS = ('name', 'env_id', 'observation', 'actuators', 'plan_body', 'fixed_frame',
                'control_period_s', 'model_file', 'maze_map', 'maze_cell_m')


def profile_from_dict(raw: dict, source: str) -> RobotProfile:
    """Build a profile from its YAML keys; ValueError names ``source`` and the problem."""
    if not isinstance(raw, dict):
        raise ValueError(f'{source}: a robot profile must be a mapping of keys')
    unknown = sorted(set(raw) - set(PROFILE_KEYS))
    if unknown:
        raise ValueError(f'{source}: unknown key(s) {unknown}; known keys are '
                         f'{sorted(PROFILE_KEYS)}')
    try:
        return RobotProfile(**raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{source}: {error}') from error


def load_profile(path: str | Path) -> RobotProfile:
    """Read a profile YAML, given by path or by the name of one in config/robots.

    A relative ``model_file`` is resolved against the profile's folder.
    """
    path = Path(path)
    if not path.is_file() and path.suffix == '' and len(path.parts) == 1:
        shipped = share_directory() / 'config' / 'robots' / f'{path}.yaml'
        path = shipped if shipped.is_file() else path
    if not path.is_file():
        raise ValueError(f'robot profile {path} does not exist')
    profile = profile_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
    if profile.model_file:
        profile.model_file = str((path.parent / profile.model_file).resolve())
    return profile


def profile_for(name_or_path: str, env_id: str) -> RobotProfile | None:
    """Return the profile named, else the one shipped profile of ``env_id`` (None if none)."""
    if name_or_path:
        return load_profile(name_or_path)
    matches = []
    for path in sorted((share_directory() / 'config' / 'robots').glob('*.yaml')):
        raw = yaml.safe_load(path.read_text()) or {}
        if env_id and raw.get('env_id') == env_id:
            matches.append(path)
    return load_profile(matches[0]) if len(matches) == 1 else None


def dims_mismatch(profile: RobotProfile, obs_dim: int, action_dim: int) -> str:
    """Say how a profile's vectors differ from a model's dimensions ('' when they fit)."""
    if (len(profile.observation), len(profile.actuators)) == (obs_dim, action_dim):
        return ''
    return (f'robot profile {profile.name!r} has {len(profile.observation)} observation entries '
            f'and {len(profile.actuators)} actuators, the model {obs_dim} and {action_dim}')


def profile_mismatch(profile: RobotProfile, recorded: RobotProfile) -> str:
    """Say how ``profile`` differs from the profile a bundle was trained with ('' if it fits).

    The observation (joints and fields, in order), the actuators and, where both name one, the
    env must agree; names, frames, drawing and map settings may differ.
    """
    problems = []
    if profile.env_id and recorded.env_id and profile.env_id != recorded.env_id:
        problems.append(f'env {profile.env_id!r} against {recorded.env_id!r}')
    ours = [(e.joint, e.field) for e in profile.observation]
    theirs = [(e.joint, e.field) for e in recorded.observation]
    if ours != theirs:
        problems.append(f'observation {_entries(ours)} against {_entries(theirs)}')
    if list(profile.actuators) != list(recorded.actuators):
        problems.append(f'actuators {list(profile.actuators)} against '
                        f'{list(recorded.actuators)}')
    return '; '.join(problems)


def _entries(entries: list) -> str:
    return '[' + ', '.join(f'{joint}.{field}' for joint, field in entries) + ']'


class Kinematics:
    """Positions of the profile's plan body for planned states (MuJoCo forward kinematics)."""

    def __init__(self, profile: RobotProfile, model):
        import mujoco

        self._mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, profile.plan_body)
        if self.body < 0:
            raise ValueError(f'MuJoCo model has no body {profile.plan_body!r} (profile '
                             f'{profile.name!r}, plan_body)')
        self._slots = []  # (observation index, qpos address) for position entries
        for i, entry in enumerate(profile.observation):
            if entry.field == 'position':
                jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, entry.joint)
                if jid < 0:
                    raise ValueError(f'MuJoCo model has no joint {entry.joint!r} (profile '
                                     f'{profile.name!r})')
                self._slots.append((i, int(model.jnt_qposadr[jid])))

    def body_positions(self, states: np.ndarray) -> np.ndarray:
        """(H, obs_dim) planned states -> (H, 3) world positions of the plan body."""
        out = np.empty((len(states), 3))
        for row, state in enumerate(states):
            for index, address in self._slots:
                self.data.qpos[address] = state[index]
            self._mujoco.mj_kinematics(self.model, self.data)
            out[row] = self.data.xpos[self.body]
        return out


class JointPositionDrawing:
    """Plan drawings for a robot without a kinematics model: its planned joint positions.

    The first three position entries of each planned state are x, y and z (missing ones 0): a
    mobile base's or a ball's planar position draws as it moves.
    """

    def __init__(self, profile: RobotProfile):
        self._columns = [i for i, e in enumerate(profile.observation)
                         if e.field == 'position'][:3]

    def body_positions(self, states: np.ndarray) -> np.ndarray:
        """(H, obs_dim) planned states -> (H, 3) points."""
        out = np.zeros((len(states), 3))
        out[:, :len(self._columns)] = np.asarray(states)[:, self._columns]
        return out


def robot_world(profile: RobotProfile):
    """Return the maze grid (or None) and plan drawing of a profile, from its env or files."""
    from diffusion_planner_ros.data.maze import MazeGrid

    if profile.env_id:
        from diffusion_planner_ros.envs import is_goal_env, make_env

        env = make_env(profile.env_id)
        try:
            grid = MazeGrid.from_env(env) if is_goal_env(profile.env_id) else None
            return grid, Kinematics(profile, env.unwrapped.model)
        finally:
            env.close()
    grid = MazeGrid(profile.maze_map, profile.maze_cell_m) if profile.maze_map else None
    if not profile.model_file:
        return grid, JointPositionDrawing(profile)
    import mujoco

    try:
        model = mujoco.MjModel.from_xml_path(profile.model_file)
    except (ValueError, OSError) as error:
        raise ValueError(f'profile {profile.name!r}: cannot read model_file '
                         f'{profile.model_file}: {error}') from error
    return grid, Kinematics(profile, model)
