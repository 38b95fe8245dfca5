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
    """How a robot's joints map onto a bundle's observation and action vectors."""

    name: str
    # gymnasium env the sim bridge runs for this robot.
    env_id: str
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

    def __post_init__(self) -> None:
        self.observation = [e if isinstance(e, ObservationEntry) else ObservationEntry(**e)
                            for e in self.observation]
        if not self.observation or not self.actuators:
            raise ValueError(f'profile {self.name!r} needs observation entries and actuators')
        if not self.control_period_s >= 0:
            raise ValueError(f'profile {self.name!r}: control_period_s must be >= 0, got '
                             f'{self.control_period_s}')

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


def load_profile(path: str | Path) -> RobotProfile:
    """Read a profile YAML, given by path or by the name of one in config/robots."""
    path = Path(path)
    if not path.is_file() and path.suffix == '' and len(path.parts) == 1:
        shipped = share_directory() / 'config' / 'robots' / f'{path}.yaml'
        path = shipped if shipped.is_file() else path
    if not path.is_file():
        raise ValueError(f'robot profile {path} does not exist')
    raw = yaml.safe_load(path.read_text()) or {}
    known = {'name', 'env_id', 'observation', 'actuators', 'plan_body', 'fixed_frame',
             'control_period_s'}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f'{path}: unknown key(s) {unknown}; known keys are {sorted(known)}')
    try:
        return RobotProfile(**raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{path}: {error}') from error


class Kinematics:
    """Positions of the profile's plan body for planned states (MuJoCo forward kinematics)."""

    def __init__(self, profile: RobotProfile, model):
        import mujoco

        self._mujoco = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, profile.plan_body)
        if self.body < 0:
            raise ValueError(f'MuJoCo model has no body {profile.plan_body!r}')
        self._slots = []  # (observation index, qpos address) for position entries
        for i, entry in enumerate(profile.observation):
            if entry.field == 'position':
                jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, entry.joint)
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
