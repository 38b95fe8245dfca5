"""Plan latency of a bundle per stage, eager against the optimized path, on the same inputs.

Each backend gets its own planner from the bundle, a warm-up, then the same stream of
observations and goals (a seeded random walk inside the bundle's state bounds, with a new
episode every ``episode_length`` calls). Reported per stage and for the whole plan: p50, p99 and
mean milliseconds, the build time (load + capture), and how far the optimized plans are from
the eager ones.

``interleave`` compares bundles (Trajectory Diffuser against Decision Diffuser, say) in one
process, one plan of each in turn, so that a machine whose speed drifts during the run slows
every method alike and their ratio stays comparable.
"""

from __future__ import annotations

import time

import numpy as np

from diffusion_planner_ros.evaluation import machine
from diffusion_planner_ros.planning import BasePlanner, load_planner


def input_stream(planner: BasePlanner, calls: int, seed: int,
                 episode_length: int = 50) -> list[tuple]:
    """Return (observation, goal or None, episode start) per call, the same for any backend."""
    rng = np.random.default_rng(seed)
    states = planner.bundle.normalizers['states']
    goals = planner.bundle.normalizers.get('goals')
    low, high = states.low, states.high
    span = high - low
    stream, observation, goal = [], None, None
    for call in range(calls):
        start = call % episode_length == 0
        if start:
            observation = low + span * rng.uniform(0.1, 0.9, low.shape)
            goal = None if goals is None else rng.uniform(goals.low, goals.high)
        else:
            observation = np.clip(observation + 0.02 * span * rng.standard_normal(low.shape),
                                  low, high)
        stream.append((observation.copy(), goal, start))
    return stream


def run_stream(planner: BasePlanner, stream: list[tuple]) -> tuple[dict, list]:
    """Plan along the stream; returns per-stage milliseconds and the plans' (states, actions)."""
    timings: dict[str, list[float]] = {}
    plans = []
    for observation, goal, start in stream:
        if start:
            planner.reset()
        plan = planner.plan(observation, goal=goal)
        for stage, ms in plan.timings_ms.items():
            timings.setdefault(stage, []).append(ms)
        plans.append((plan.refined_states, plan.actions))
    return timings, plans


def stage_summary(timings: dict) -> dict:
    """Stage -> {'p50', 'p99', 'mean'} in milliseconds."""
    return {stage: {'p50': float(np.percentile(values, 50)),
                    'p99': float(np.percentile(values, 99)),
                    'mean': float(np.mean(values))}
            for stage, values in timings.items()}


def measure_backend(bundle: str, device: str, backend: str, calls: int, warmup: int,
                    seed: int, **overrides) -> tuple[dict, list]:
    """Build a planner on ``backend``, warm it up, then time ``calls`` plans."""
    begin = time.perf_counter()
    planner = load_planner(bundle, device=device, backend=backend, **overrides)
    planner.warm_up()
    build_s = time.perf_counter() - begin
    stream = input_stream(planner, warmup + calls, seed)
    run_stream(planner, stream[:warmup])
    timings, plans = run_stream(planner, stream[warmup:])
    result = {
        'backend': planner.backend,
        'backend_reason': planner.backend_reason,
        'fallbacks': planner.fallback_reasons,
        'build_s': build_s,
        'stages_ms': stage_summary(timings),
    }
    return result, plans


def compare_backends(bundle: str, device: str = 'cpu', calls: int = 500, warmup: int = 50,
                     seed: int = 0, optimized: str = 'auto', **overrides) -> dict:
    """Measure eager and the optimized path in one run; returns the report as a dict."""
    eager, eager_plans = measure_backend(bundle, device, 'eager', calls, warmup, seed,
                                         **overrides)
    fast, fast_plans = measure_backend(bundle, device, optimized, calls, warmup, seed,
                                       **overrides)
    state_gap = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(fast_plans, eager_plans))
    action_gap = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(fast_plans, eager_plans))
    planner = load_planner(bundle, device=device, backend='eager', **overrides)
    return {
        'bundle': str(bundle),
        'method': planner.method,
        'device': str(planner.device),
        'machine': machine(),
        'calls': calls,
        'warmup': warmup,
        'seed': seed,
        'settings': {'horizon': planner.horizon, 'history': planner.history,
                     'refine_steps': planner.config.refine_steps,
                     'guidance_scale': planner.config.guidance_scale,
                     'replan_every': planner.config.replan_every,
                     'threads': planner.config.threads},
        'eager': eager,
        'optimized': fast,
        'speedup_p50': eager['stages_ms']['total']['p50'] / fast['stages_ms']['total']['p50'],
        'max_state_difference': state_gap,
        'max_action_difference': action_gap,
    }


def interleave(bundles: dict[str, str], device: str = 'cpu', backend: str = 'auto',
               calls: int = 100, warmup: int = 10, seed: int = 0, threads: int | None = None,
               settings: dict[str, dict] | None = None) -> dict:
    """Time the bundles' plans one after the other, call by call, on one backend.

    settings maps a name to planner options for that bundle only (warm_start_steps, say); one
    bundle may then appear under two names.

    Every planner plans the same observation stream (it depends on the bundle's state bounds and
    ``seed`` only); the order alternates each call so that no method always runs first.
    Returns {name: {backend, backend_reason, stages_ms}} plus 'ratios': the p50 plan time of
    each bundle over the first one's, and the median of the per-call ratios.
    """
    if len(bundles) < 2:
        raise ValueError('interleave needs at least two bundles')
    overrides = {} if threads is None else {'threads': threads}
    settings = settings or {}
    planners = {name: load_planner(path, device=device, backend=backend, **overrides,
                                   **settings.get(name, {}))
                for name, path in bundles.items()}
    streams = {}
    for name, planner in planners.items():
        planner.warm_up()
        streams[name] = input_stream(planner, warmup + calls, seed)
    names = list(planners)
    timings: dict[str, dict] = {name: {} for name in names}
    for call in range(warmup + calls):
        for name in names if call % 2 == 0 else names[::-1]:
            observation, goal, start = streams[name][call]
            if start:
                planners[name].reset()
            plan = planners[name].plan(observation, goal=goal)
            if call < warmup:
                continue
            for stage, ms in plan.timings_ms.items():
                timings[name].setdefault(stage, []).append(ms)
    first = names[0]
    report = {name: {'bundle': str(bundles[name]), 'method': planners[name].method,
                     'settings': settings.get(name, {}),
                     'backend': planners[name].backend,
                     'backend_reason': planners[name].backend_reason,
                     'stages_ms': stage_summary(timings[name])}
              for name in names}
    report['ratios'] = {
        f'{name}/{first}': {
            'p50': (report[name]['stages_ms']['total']['p50']
                    / report[first]['stages_ms']['total']['p50']),
            'median_per_call': float(np.median(np.asarray(timings[name]['total'])
                                               / np.asarray(timings[first]['total']))),
        }
        for name in names[1:]}
    return report


def latency_table(report: dict) -> str:
    """Markdown table: one row per stage, eager and optimized p50 / p99 and the p50 ratio."""
    eager, fast = report['eager']['stages_ms'], report['optimized']['stages_ms']
    lines = [f'| stage | eager p50 | eager p99 | {report["optimized"]["backend"]} p50 | '
             f'{report["optimized"]["backend"]} p99 | speed-up (p50) |',
             '|---|---|---|---|---|---|']
    for stage in eager:
        if stage not in fast:
            continue
        lines.append(f'| {stage} | {eager[stage]["p50"]:.2f} | {eager[stage]["p99"]:.2f} | '
                     f'{fast[stage]["p50"]:.2f} | {fast[stage]["p99"]:.2f} | '
                     f'{eager[stage]["p50"] / max(fast[stage]["p50"], 1e-9):.1f}x |')
    return '\n'.join(lines)
