"""What a planner runs with where its node leaves a parameter unset: the bundle's values."""

from __future__ import annotations

import math

from diffusion_planner_ros.planning.bundle import Bundle
from diffusion_planner_ros.robots import (dims_mismatch, load_profile, profile_mismatch,
                                          RobotProfile)

# Node parameters that are the sampler's options (Trajectory Diffuser's k, w, alpha, and the
# warm start and candidates of the methods that have them).
SAMPLER_PARAMETERS = ('refine_steps', 'guidance_scale', 'noise_scale', 'warm_start_steps',
                      'candidates')


def bundle_settings(bundle: Bundle, profile: RobotProfile) -> dict:
    """Return the rates and target a node uses for parameters it was not given.

    The control rate is the robot's (its profile's control period, which the bundle's data was
    recorded at); the plan rate executes the bundle's ``planner.replan_every`` actions per plan,
    as training/evaluate.py scores it; the returns target NaN stands for the bundle's.
    """
    if not profile.control_period_s > 0:
        raise ValueError(f'profile {profile.name!r} has no control_period_s: set parameter '
                         "'control_rate_hz' (and 'plan_rate_hz')")
    control_rate = 1.0 / profile.control_period_s
    return {'control_rate_hz': control_rate,
            'plan_rate_hz': control_rate / bundle.config.planner.replan_every,
            'target_return': math.nan}


def bundle_robot(bundle: Bundle, given: str = '') -> RobotProfile:
    """Return the robot profile a node plans for: the one given, else the bundle's.

    A profile given by path or shipped name must fit the bundle (dimensions, and the joints,
    actuators and env of the robot it records); ValueError names both sides of a mismatch.
    """
    if not given:
        if bundle.robot is None:
            raise ValueError(f'bundle {bundle.path} records no robot profile: set parameter '
                             "'profile' (a YAML path or a name in config/robots)")
        profile = bundle.robot
    else:
        profile = load_profile(given)
        problem = dims_mismatch(profile, bundle.dims.obs, bundle.dims.action)
        if not problem and bundle.robot is not None:
            problem = profile_mismatch(profile, bundle.robot)
        if problem:
            recorded = f' {bundle.robot.name!r}' if bundle.robot is not None else ''
            raise ValueError(f'profile {given} does not fit bundle {bundle.path}{recorded}: '
                             f'{problem}')
    condition = bundle.config.data.condition
    if profile.maze_map and condition != 'goal':
        raise ValueError(f'profile {profile.name!r} gives a maze_map, but bundle {bundle.path} '
                         f'plans for {condition}, not for goals: leave the map out')
    return profile
