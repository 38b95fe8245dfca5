"""Closed-loop evaluation in the gymnasium env, with no ROS: scores, success, plan latency.

The score is normalised the D4RL way: 100 * (return - random) / (reference - random), with the
random and reference (scripted controller) returns measured by the project and kept in config.
"""

from __future__ import annotations

import os
import platform
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from diffusion_planner_ros.data.behavior import BehaviorPolicy, action_source
from diffusion_planner_ros.data.maze import MazeGrid, WaypointController
from diffusion_planner_ros.envs import is_goal_env, make_env, split_observation
from diffusion_planner_ros.planning.planner import BasePlanner
from diffusion_planner_ros.planning.returns import episode_target, ReturnsToGo, target_steps

Policy = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


@dataclass
class EpisodeResult:
    """One episode's outcome."""

    seed: int
    episode_return: float
    success: bool
    steps: int
    plan_ms: list = field(default_factory=list)
    # Per stage of a plan (None where the method has no such stage).
    stage_ms: dict = field(default_factory=lambda: {'prior': [], 'refine': [], 'sample': []})


# How a returns-conditioned planner's target falls during an episode: by each reward (the
# paper's protocol), by an even share per step (a robot that reports no rewards: the node's
# default then), or not at all (held, for comparison).
RETURNS = ('rewards', 'paced', 'held')


def episode_returns(planner: BasePlanner, target_return: float | None,
                    returns: str) -> ReturnsToGo:
    """Return an episode's returns-to-go for one of RETURNS."""
    if returns not in RETURNS:
        raise ValueError(f'returns {returns!r} must be one of {RETURNS}')
    paced = returns == 'paced' and planner.condition_kind == 'returns'
    return ReturnsToGo(episode_target(planner, target_return),
                       target_steps(planner) if paced else 0)


def run_planner_episode(planner: BasePlanner, env, seed: int,
                        target_return: float | None = None,
                        on_step: Callable | None = None,
                        returns: str = 'rewards') -> EpisodeResult:
    """One episode with replanning every ``replan_every`` steps; the env picks the goal.

    A returns-conditioned planner starts at target_return (None: its config's) and the target
    decreases by each reward received (the paper's protocol), or with returns='paced' by an
    even share per step, as on a robot that reports no rewards. on_step(step, state, goal,
    plan), if given, sees each state and the plan its action comes from.
    """
    observation, info = env.reset(seed=seed)
    planner.reset()
    result = EpisodeResult(seed, 0.0, bool(info.get('success', False)), 0)
    returns_to_go = episode_returns(planner, target_return, returns)
    return _act_until_done(planner, env, observation, result, returns_to_go, on_step,
                           spend_rewards=returns == 'rewards')


def _act_until_done(planner: BasePlanner, env, observation, result: EpisodeResult,
                    returns_to_go: ReturnsToGo, on_step: Callable | None = None,
                    spend_rewards: bool = True) -> EpisodeResult:
    """Plan every ``replan_every`` steps and act until the env ends the episode."""
    chunk, done = None, False
    while not done:
        state, goal = split_observation(observation)
        index = result.steps % planner.config.replan_every
        if index == 0:
            plan = planner.plan(state, goal=goal, returns_to_go=returns_to_go.at(result.steps))
            chunk = plan.actions
            if plan.fresh:   # a step that follows an earlier plan made none
                result.plan_ms.append(plan.timings_ms['total'])
                for stage, values in result.stage_ms.items():
                    values.append(plan.timings_ms.get(stage))
        if on_step is not None:
            on_step(result.steps, state, goal, plan)
        observation, reward, terminated, truncated, info = env.step(
            chunk[index].astype(np.float32))
        result.episode_return += float(reward)
        result.success |= bool(info.get('success', False))
        result.steps += 1
        if spend_rewards:
            returns_to_go.spend(reward)
        done = terminated or truncated
    return result


LATE_ACTIONS = ('first', 'chunk', 'track')


def run_delayed_episode(planner: BasePlanner, env, seed: int, delay: int,
                        late: str = 'first', returns: str = 'rewards',
                        lead: int = 0) -> EpisodeResult:
    """One episode in which every command takes ``delay`` env steps to arrive.

    The planner plans from every state; the plan started at step t is in force from step
    t + delay on (a robot whose plans take ``delay`` control periods), and until then the
    previous plan's command holds (zero before the first). ``late`` says what a plan in force
    commands at a later step: 'first', its first action (what it planned for the state it
    started from); 'chunk', its action for the step under way (the last one past its end);
    'track', inverse dynamics from the state measured at the step to the plan's state for the
    step's end. With ``lead`` > 0 (latency-aware planning) each plan starts from the state the
    bundle's transition model predicts ``lead`` steps ahead, through the commands in flight,
    and its first action is meant for step t + lead. No clock: the same figures on any machine.
    """
    if delay < 0 or lead < 0:
        raise ValueError(f'delay and lead must be >= 0, got {delay} and {lead}')
    if late not in LATE_ACTIONS:
        raise ValueError(f'late must be one of {LATE_ACTIONS}, got {late!r}')
    observation, info = env.reset(seed=seed)
    planner.reset()
    result = EpisodeResult(seed, 0.0, bool(info.get('success', False)), 0)
    returns_to_go = episode_returns(planner, None, returns)
    plans: deque = deque()   # (step the plan takes effect, step its first action is for, plan)

    def in_force(step: int):
        """Return the plan in force at ``step`` and the step's index in it, or (None, 0)."""
        current = [p for p in plans if p[0] <= step]
        return (current[-1][2], max(step - current[-1][1], 0)) if current else (None, 0)

    def target(plan, index: int) -> np.ndarray:
        """Return the state ``plan`` plans for the end of its step ``index`` (NaN: no plan)."""
        if plan is None:
            return np.full(planner.obs_dim, np.nan)
        return plan.refined_states[min(index + 1, len(plan.refined_states) - 1)]

    def command(step: int, state: np.ndarray) -> np.ndarray:
        """Return the command the robot applies at ``step``, from the state measured then."""
        plan, index = in_force(step)
        if plan is None:
            return np.zeros(planner.action_dim)
        if late == 'track':
            return planner.track(state, target(plan, index))
        actions = plan.actions
        return actions[min(index, len(actions) - 1)] if late == 'chunk' else actions[0]

    done = False
    while not done:
        state, goal = split_observation(observation)
        start = state
        if lead and late == 'track':
            start, _ = planner.predict_tracked(
                state, [target(*in_force(result.steps + i)) for i in range(lead)])
        elif lead:
            # First and chunk commands do not depend on the state measured at their step.
            start = planner.predict_state(
                state, [command(result.steps + i, state) for i in range(lead)])
        plan = planner.plan(start, goal=goal,
                            returns_to_go=returns_to_go.at(result.steps + lead))
        result.plan_ms.append(plan.timings_ms['total'])
        plans.append((result.steps + delay, result.steps + lead, plan))
        while len(plans) > 1 and plans[1][0] <= result.steps:
            plans.popleft()
        observation, reward, terminated, truncated, info = env.step(
            command(result.steps, state).astype(np.float32))
        result.episode_return += float(reward)
        result.success |= bool(info.get('success', False))
        result.steps += 1
        if returns == 'rewards':
            returns_to_go.spend(reward)
        done = terminated or truncated
    return result


def restore_locomotion_state(env, observation: np.ndarray) -> None:
    """Put a MuJoCo locomotion env into the state a recorded observation describes.

    Hopper and Walker2d leave the x position out of the observation: qpos is (0, the
    observation's first nq - 1 entries) and qvel the remaining nv (the env clips observed
    velocities to +-10, so a state beyond that comes back clipped).
    """
    model = env.unwrapped.model
    if observation.shape != (model.nq - 1 + model.nv,):
        raise ValueError(f'observation of shape {observation.shape} is not (nq - 1 + nv,) = '
                         f'({model.nq - 1 + model.nv},) for {env.spec.id}')
    env.unwrapped.set_state(np.concatenate([[0.0], observation[:model.nq - 1]]),
                            observation[model.nq - 1:])


def run_planner_from_data(planner: BasePlanner, env, observations: np.ndarray, start: int,
                          seed: int, target_return: float | None = None) -> EpisodeResult:
    """Run the planner from step ``start`` of a recorded episode instead of from a reset.

    The planner reads the recorded states before ``start`` as its history, the env is put into
    the recorded state at ``start``, then the planner acts as in run_planner_episode until the
    env ends the episode (its time limit counts from here). Locomotion envs only
    (restore_locomotion_state).
    """
    if not 0 <= start < len(observations):
        raise ValueError(f'start {start} is outside the recorded {len(observations)} states')
    env.reset(seed=seed)
    planner.reset()
    returns_to_go = ReturnsToGo(episode_target(planner, target_return))
    for past in observations[max(0, start - planner.history + 1):start]:
        planner.observe(past, returns_to_go=returns_to_go.value)
    restore_locomotion_state(env, observations[start])
    result = EpisodeResult(seed, 0.0, False, 0)
    return _act_until_done(planner, env, observations[start], result, returns_to_go)


def run_policy_episode(policy: Policy, env, seed: int) -> EpisodeResult:
    """One episode of a plain policy (the reference controllers)."""
    observation, info = env.reset(seed=seed)
    result = EpisodeResult(seed, 0.0, bool(info.get('success', False)), 0)
    done = False
    while not done:
        state, goal = split_observation(observation)
        observation, reward, terminated, truncated, info = env.step(
            np.asarray(policy(state, goal), dtype=np.float32))
        result.episode_return += float(reward)
        result.success |= bool(info.get('success', False))
        result.steps += 1
        done = terminated or truncated
    return result


def reference_policy(name: str, env, seed: int = 0) -> Policy:
    """Return a reference policy: 'random', 'scripted', or a behavior policy's folder.

    'random' draws uniform actions; 'scripted' is the maze controller that made the data; a
    folder holds a behavior policy (data/behavior.py) whose actions are sampled, as in its data.
    """
    if name not in ('random', 'scripted') and Path(name).is_dir():
        act = action_source(env, BehaviorPolicy.load(name), np.random.default_rng(seed))
        return lambda state, goal: act(state)
    if name == 'random':
        space = env.action_space
        rng = np.random.default_rng(seed)
        return lambda state, goal: rng.uniform(space.low, space.high)
    if name == 'scripted':
        if not is_goal_env(env.spec.id):
            raise ValueError(f'no scripted controller for {env.spec.id}')
        controller = WaypointController(MazeGrid.from_env(env))
        return lambda state, goal: controller(state, goal)
    raise ValueError(f'unknown reference policy {name!r}: use random, scripted or the folder '
                     'of a behavior policy')


def evaluate(env_id: str, episodes: int, seed: int,
             planner: BasePlanner | None = None,
             policy_name: str | None = None, target_return: float | None = None,
             progress: bool = True,
             max_episode_steps: int | None = None,
             returns: str = 'rewards') -> list[EpisodeResult]:
    """Run ``episodes`` episodes with seeds seed, seed + 1, ... (one random goal each).

    target_return and returns are a returns-conditioned planner's start and how its target
    falls (run_planner_episode). max_episode_steps shortens episodes (smoke runs); None keeps
    the env's own limit.
    """
    if (planner is None) == (policy_name is None):
        raise ValueError('pass exactly one of planner and policy_name')
    env = make_env(env_id, **({'max_episode_steps': max_episode_steps}
                              if max_episode_steps else {}))
    policy = reference_policy(policy_name, env, seed) if policy_name else None
    results = []
    for episode in tqdm(range(episodes), desc='evaluate', disable=not progress):
        if planner is not None:
            results.append(run_planner_episode(planner, env, seed + episode, target_return,
                                               returns=returns))
        else:
            results.append(run_policy_episode(policy, env, seed + episode))
    env.close()
    return results


def summarize(results: list[EpisodeResult], random_return: float,
              reference_return: float) -> dict:
    """Normalised score (mean and standard error), success rate and latency percentiles."""
    returns = np.array([r.episode_return for r in results])
    scale = 100.0 / (reference_return - random_return)
    stderr = returns.std(ddof=1) / np.sqrt(len(returns)) if len(returns) > 1 else 0.0

    def pct(stage: str, q: float) -> float | None:
        values = [v for r in results
                  for v in (r.plan_ms if stage == 'plan' else r.stage_ms[stage])
                  if v is not None]
        return float(np.percentile(values, q)) if values else None

    return {
        'episodes': len(results),
        'return_mean': float(returns.mean()),
        'score_mean': float((returns.mean() - random_return) * scale),
        'score_stderr': float(stderr * scale),
        'success_rate': float(np.mean([r.success for r in results])),
        'plan_ms_p50': pct('plan', 50),
        'plan_ms_p99': pct('plan', 99),
        'prior_ms_p50': pct('prior', 50),
        'refine_ms_p50': pct('refine', 50),
        'sample_ms_p50': pct('sample', 50),
        # Plans made per episode: every replan_every steps, or fewer when plans are tracked.
        'plans_per_episode': float(np.mean([len(r.plan_ms) for r in results])),
        # Per episode, in seed order, for paired comparisons between methods on the same seeds.
        'episode_returns': returns.tolist(),
        'episode_successes': [bool(r.success) for r in results],
    }


SETTINGS = ('refine_steps', 'guidance_scale', 'noise_scale', 'replan_every',
            'value_guidance_scale', 'warm_start_steps', 'candidates', 'target_return',
            'sample_steps', 'track_states', 'transition_guidance', 'transition_guide',
            'guide_levels', 'guide_step_limit')


def method_label(planner: BasePlanner) -> str:
    """Name the method: the bundle's, or prior_only for Trajectory Diffuser with k = 0."""
    if planner.method == 'trajectory_diffuser' and planner.config.refine_steps == 0:
        return 'prior_only'
    return planner.method


def planner_settings(planner: BasePlanner | None) -> dict:
    """Return the sampler settings an evaluation ran with (None for a reference policy).

    backend is the path the stages ran on (planning/accelerate.py), after 'auto' is resolved.
    """
    settings = {name: getattr(planner.config, name) if planner else None for name in SETTINGS}
    settings['backend'] = planner.backend if planner else None
    return settings


def machine() -> str:
    """Describe the machine a figure came from, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            cpu = next(line.split(':', 1)[1].strip() for line in cpuinfo
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{cpu}, {os.cpu_count()} CPUs, {device}, torch {torch.__version__}'
