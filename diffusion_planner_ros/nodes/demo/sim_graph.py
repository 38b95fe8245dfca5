"""sim_graph: the launch-equivalent runner (what `make demo` uses where launch_ros is missing).

Reads launch/sim.launch.py, starts the same console scripts with the same --ros-args as
separate processes, then drives episodes with the demo client and prints success and latency.

Usage:
    sim_graph --episodes 20                      # lockstep: deterministic, comparable offline
    sim_graph --realtime --episodes 5            # wall-clock bridge, planner on its timers
    sim_graph bundle:=/path/to/bundle state_topic:=/robot/joint_states
    sim_graph --realtime --drop-states 0.2      # the planner misses 20% of the states
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from diffusion_planner_ros.evaluation import EpisodeResult, summarize
from diffusion_planner_ros.launch_file import read_launch_file
from diffusion_planner_ros.nodes.demo.client import DemoClient
from diffusion_planner_ros.nodes.demo.lossy_relay import LossyRelay
from diffusion_planner_ros.nodes.runner import DUMP_STACKS_SIGNAL
from diffusion_planner_ros.planning.bundle import read_config
from diffusion_planner_ros.robots import load_profile
from diffusion_planner_ros.share import share_directory


def start_nodes(specs, extra_params: dict) -> list[subprocess.Popen]:
    """Start every enabled node as its console script; skip tools that are not installed."""
    processes = []
    for spec in specs:
        if not spec.enabled:
            continue
        executable = (shutil.which(spec.executable)
                      or str(Path(sys.prefix) / 'bin' / spec.executable))
        if not Path(executable).is_file():
            print(f'sim_graph: {spec.executable} is not installed; not started')
            continue
        args = spec.ros_args()
        for key, value in extra_params.get(spec.name, {}).items():
            args += ['-p', f'{key}:={value}']
        processes.append(subprocess.Popen([executable, *args]))
    return processes


def stop_nodes(processes: list[subprocess.Popen], timeout: float = 15.0) -> list[int]:
    """SIGINT (the nodes command zero on the way out), then wait; kill what hangs.

    A node still running after ``timeout`` seconds prints its threads' stacks before it is
    killed, so a hang at shutdown shows where it is.
    """
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            print(f'sim_graph: {process.args[0]} did not stop within {timeout:g} s of SIGINT; '
                  'its stacks follow, then SIGKILL', flush=True)
            process.send_signal(DUMP_STACKS_SIGNAL)
            try:
                codes.append(process.wait(timeout=2))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
    return codes


def main(argv=None) -> None:
    """Run the graph and the demo episodes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('launch_args', nargs='*', metavar='name:=value',
                        help='launch arguments, as with ros2 launch')
    parser.add_argument('--episodes', type=int, default=10)
    parser.add_argument('--realtime', action='store_true',
                        help='wall-clock bridge instead of lockstep')
    parser.add_argument('--steps', type=int, default=None,
                        help='env steps per episode (default: the env\'s own limit)')
    parser.add_argument('--drop-states', type=float, default=0.0, metavar='SHARE',
                        help='drop this share of the states on their way to the planner '
                             '(a lossy link; real time only)')
    parser.add_argument('--json', default=None, help='write the figures here')
    args = parser.parse_args(argv)
    if args.drop_states and not args.realtime:
        parser.error('--drop-states needs --realtime: a lockstep bridge waits for every command')
    if not 0.0 <= args.drop_states < 1.0:
        parser.error('--drop-states must be in [0, 1)')
    overrides = {}
    for item in args.launch_args:
        name, sep, value = item.partition(':=')
        if not sep:
            parser.error(f'launch argument {item!r} must look like name:=value')
        overrides[name] = value

    share = share_directory()
    launch_args, specs = read_launch_file(share / 'launch' / 'sim.launch.py', share, overrides)
    profile = load_profile(launch_args['profile'])
    demo_env_steps = args.steps
    if demo_env_steps is None:
        from diffusion_planner_ros.envs import make_env
        env = make_env(profile.env_id)
        demo_env_steps = env.spec.max_episode_steps
        env.close()
    lockstep = not args.realtime
    # Lockstep keeps the params file's rates, so a plan covers control_rate_hz / plan_rate_hz
    # env steps, as in real time and as training/evaluate.py runs the bundle's replan_every.
    planner_extra = {'lockstep': str(lockstep).lower()}
    extra = {
        'planner_node': planner_extra,
        'sim_bridge_node': {'lockstep': str(lockstep).lower(),
                            'episode_steps': demo_env_steps if lockstep else 0},
    }
    # The runner's own node must see the same seed as the bridge.
    bridge = next((s for s in specs if s.name == 'sim_bridge_node' and s.enabled), None)
    seed = _bridge_seed(bridge)
    state_topic = launch_args['state_topic']
    lossy_topic = f'{state_topic.rstrip("/")}_lossy'
    if args.drop_states:
        planner = next(s for s in specs if s.name == 'planner_node')
        planner.remappings = [(source, lossy_topic if source == 'joint_states' else target)
                              for source, target in planner.remappings]

    processes = start_nodes(specs, extra)
    rclpy.init()
    client = DemoClient(profile, seed, state_topic=state_topic,
                        command_topic=launch_args['command_topic'])
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    relay = None
    if args.drop_states:
        relay = LossyRelay(state_topic, lossy_topic, args.drop_states, seed=seed)
        executor.add_node(relay)
    records = []
    try:
        client.wait_for_graph(executor, launch_args['command_topic'])
        if relay is not None and not client.spin_until(
                executor, lambda: relay.publisher.get_subscription_count() > 0, 60.0):
            raise RuntimeError(f'the planner does not listen on {lossy_topic}')
        for episode in range(1, args.episodes + 1):
            timeout = 120.0 if lockstep else demo_env_steps * 0.01 * 3 + 10
            record = client.run_episode(executor, episode, demo_env_steps, timeout,
                                        bridge_ends=lockstep)
            records.append(record)
            print(f'episode {episode}: seed {record.seed} success {record.success} return '
                  f'{record.episode_return:.0f} states {record.states}'
                  f'{" (timed out)" if record.timed_out else ""}', flush=True)
        # One more diagnostics period so the figures cover the last episode.
        client.spin_until(executor, lambda: False, 1.2)
    finally:
        diagnostics = dict(client.diagnostics)
        rate = client.command_rate()
        client.destroy_node()
        if relay is not None:
            dropped = {'states_relayed': relay.received, 'states_dropped': relay.dropped}
            relay.destroy_node()
        rclpy.try_shutdown()
        codes = stop_nodes(processes)
    summary = {
        'mode': 'lockstep' if lockstep else 'realtime',
        'robot': launch_args['robot'],
        'episodes': len(records),
        'success_rate': float(np.mean([r.success for r in records])) if records else 0.0,
        'return_mean': float(np.mean([r.episode_return for r in records])) if records else 0.0,
        'episode_returns': [r.episode_return for r in records],
        'episode_ends': [r.end for r in records],
        **_score(records, launch_args['bundle']),
        'timed_out': int(sum(r.timed_out for r in records)),
        'planner_diagnostics': diagnostics,
        'commands': rate,
        'exit_codes': codes,
        'seeds': [r.seed for r in records],
    }
    if relay is not None:
        summary.update(drop_states=args.drop_states, **dropped)
    print(f'success rate {summary["success_rate"]:.3f} over {summary["episodes"]} episodes '
          f'({summary["mode"]}), mean return {summary["return_mean"]:.1f}, normalised score '
          f'{summary.get("score_mean", float("nan")):.1f}')
    for key in ('plan_latency_p50_ms', 'plan_latency_p99_ms', 'state_to_command_p50_ms',
                'state_to_command_p99_ms', 'deadline_misses'):
        print(f'  {key}: {diagnostics.get(key, "n/a")}')
    for key, value in rate.items():
        print(f'  {key}: {value:.3f}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + '\n')
    if any(code not in (0, -signal.SIGINT) for code in codes):
        raise SystemExit(f'a node exited with {codes}')


def _score(records, bundle: str) -> dict:
    """Normalised score against the bundle's reference returns (evaluate.py's figure)."""
    if not records:
        return {}
    evaluation = read_config(bundle).evaluation
    results = [EpisodeResult(r.seed, r.episode_return, r.success, len(r.rewards))
               for r in records]
    outcome = summarize(results, evaluation.random_return, evaluation.reference_return)
    return {key: outcome[key] for key in ('score_mean', 'score_stderr')}


def _bridge_seed(spec) -> int:
    import yaml

    seed = 0
    if spec is None:
        return seed
    for path in spec.params_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        seed = data.get(spec.name, {}).get('ros__parameters', {}).get('seed', seed)
    return int(spec.parameters.get('seed', seed))


if __name__ == '__main__':
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    main()
