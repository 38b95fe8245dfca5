#!/usr/bin/env python3
"""Real-time benchmark: the planner on the robot's clock, against lockstep on the same seeds.

Usage:
    python tools/benchmark/benchmark_realtime.py --robot hopper --episodes 10 \
        --json docs/results/realtime/hopper.json
    python tools/benchmark/benchmark_realtime.py --robot hopper --episodes 10 \
        --added-latency-ms 0 4 8 --variant fixed_k=plan_budget_ms:=0 \
        --plot docs/results/realtime/hopper_latency.png
    python tools/benchmark/benchmark_realtime.py --robot hopper --quick      # a smoke run
    python tools/benchmark/benchmark_realtime.py --robot pointmaze_umaze \
        --params bundle:=$PWD/runs/umaze_diffuser_maze/bundle      # another bundle, both modes

Each run starts the graph of launch/sim.launch.py (the bridge and the planner, each in its own
process) as sim_graph does, with the planner's ``reward`` topic left unconnected, and in real
time its ``episode_end`` too: a real robot publishes neither (--rewards connects them). The
lockstep run (one env step per command, a plan every planner.replan_every states, episodes as
training/evaluate.py --returns paced runs them) is the reference; each real-time run has the
bridge step at wall clock and the planner on its own timers, for every variant (planner
parameters) and every added plan latency (added_latency_ms, a stand-in for a slower computer).

Per run: score and success, their ratio to lockstep, and from the bridge's applied commands
(its joint_states effort) matched with the planner's ~/command_info, over each episode's steps
(the states after the reset state, which no step produced, up to the episode's length):
- age: control periods from the state a command was computed from to the step that applied it
  (1 = the next step, the best a real-time planner can do), p50 and p99;
- plan age: the same from the state the command's plan was made for (a tracked plan is followed
  for several steps after it, so this is the age of the plan in force);
- no_new_command: the share of steps that applied the same command as the step before, or none;
- refine steps of the plans whose commands were applied (anytime planning);
- cpu_cores: each node's CPU time over the episodes (reset pauses included) per wall second.
--bridge-params sets the bridge's parameters in every run (e.g. executor:=events).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

from diffusion_planner_ros.evaluation import EpisodeResult, machine, summarize
from diffusion_planner_ros.launch_file import read_launch_file
from diffusion_planner_ros.nodes.demo.client import DemoClient, QUEUE
from diffusion_planner_ros.nodes.demo.sim_graph import _bridge_seed, start_nodes, stop_nodes
from diffusion_planner_ros.planning.bundle import read_config
from diffusion_planner_ros.robots import load_profile
from diffusion_planner_ros.share import share_directory

UNCONNECTED = '/benchmark_realtime/unconnected'


class CommandWatcher(Node):
    """Matches each env step's applied command with the plan it came from."""

    def __init__(self, info_topic: str, period_s: float):
        super().__init__('benchmark_realtime_watcher')
        self.period_s = period_s
        self.create_subscription(Float64MultiArray, info_topic, self._on_info,
                                 QoSProfile(depth=QUEUE, reliability=ReliabilityPolicy.RELIABLE))
        # Command values -> every (state stamp, plan's state stamp, refine steps) of the
        # commands that sent them (a saturated command can come from several plans).
        self._sources: dict[tuple, list] = {}

    def _on_info(self, msg: Float64MultiArray) -> None:
        stamp, plan_stamp, steps, _, *values = msg.data
        self._sources.setdefault(tuple(values), []).append((stamp, plan_stamp, steps))

    def figures(self, records: list, steps_per_episode: int) -> dict:
        """Age, commandless steps and refine steps over the episodes' steps.

        An episode's steps are the states its client counted after the reset state (which no
        step produced), up to the episode's length; each shows the command its step applied.
        Matched after the run: a command's info may arrive after the state that shows it.
        """
        steps = []  # (age in periods or None, a new command, refine steps or None, plan age)
        for record in records:
            previous = None
            for stamp, applied in record.applied[1:steps_per_episode + 1]:
                if applied is None:
                    continue  # a state that carries no applied command (not the sim bridge)
                # The latest plan that sent these values from a state before this step's end.
                source = max((source for source in self._sources.get(applied, ())
                              if source[0] < stamp), default=None)
                if source is None:  # zero (no command in force) or a command never described
                    steps.append((None, False, None, None))
                else:
                    steps.append((round((stamp - source[0]) / self.period_s),
                                  applied != previous, source[2],
                                  round((stamp - source[1]) / self.period_s)))
                previous = applied
        self.steps = steps
        ages = [age for age, _, _, _ in steps if age is not None]
        plan_ages = [age for _, _, _, age in steps if age is not None]
        refine = [k for _, _, k, _ in steps if k is not None and k >= 0]
        if not steps:
            return {}
        return {
            'steps_recorded': len(steps),
            'age_p50_periods': float(np.percentile(ages, 50)) if ages else None,
            'age_p99_periods': float(np.percentile(ages, 99)) if ages else None,
            'age_max_periods': float(max(ages)) if ages else None,
            'plan_age_p50_periods': float(np.percentile(plan_ages, 50)) if plan_ages else None,
            'plan_age_p99_periods': float(np.percentile(plan_ages, 99)) if plan_ages else None,
            'age_counts': {str(age): ages.count(age) for age in sorted(set(ages))},
            'no_new_command_share': float(np.mean([not new for _, new, _, _ in self.steps])),
            'unmatched_share': float(np.mean([age is None for age, _, _, _ in self.steps])),
            'refine_steps_p50': float(np.percentile(refine, 50)) if refine else None,
            'refine_steps_min': float(min(refine)) if refine else None,
            'refine_steps_mean': float(np.mean(refine)) if refine else None,
        }


def pin(process, cores: set) -> None:
    """Keep a started node's threads, and those it starts later, on ``cores``."""
    for task in Path(f'/proc/{process.pid}/task').iterdir():
        os.sched_setaffinity(int(task.name), cores)


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system, s) a process's threads have used so far."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def run_graph(robot: str, lockstep: bool, episodes: int, steps: int | None,
              planner_params: dict, rewards: bool, pin_planner: bool = False,
              recorder_idle: bool = True, bridge_params: dict | None = None) -> dict:
    """Start the graph, run the episodes, stop it; return the run's figures.

    pin_planner: the planner's process gets the last core to itself, the bridge and this
    process share the others (as a robot computer keeps its planner off the driver's core).
    The figures include each node's CPU use over the episodes, in cores (CPU s per wall s; a
    plan process's own CPU is not counted).
    """
    share = share_directory()
    launch_args, specs = read_launch_file(share / 'launch' / 'sim.launch.py', share,
                                          {'robot': robot})
    profile = load_profile(launch_args['profile'])
    period_s = profile.control_period_s
    if steps is None or not period_s:
        from diffusion_planner_ros.envs import make_env
        env = make_env(profile.env_id)
        steps = steps or env.spec.max_episode_steps
        period_s = period_s or float(env.unwrapped.dt)
        env.close()
    planner = next(s for s in specs if s.name == 'planner_node')
    if not rewards:
        # Lockstep keeps episode_end: its episodes must be evaluate.py's exactly, and a loaded
        # machine can make a lockstep bridge answer late enough to look like a paused robot.
        unheard = ('reward',) if lockstep else ('reward', 'episode_end')
        planner.remappings = [(source, f'{UNCONNECTED}/{source}' if source in unheard
                               else target) for source, target in planner.remappings]
    extra = {'planner_node': {'lockstep': str(lockstep).lower(), **planner_params},
             'sim_bridge_node': {'lockstep': str(lockstep).lower(),
                                 'episode_steps': steps if lockstep else 0,
                                 **(bridge_params or {})}}
    seed = _bridge_seed(next(s for s in specs if s.name == 'sim_bridge_node'))
    processes = start_nodes(specs, extra)
    all_cores = os.sched_getaffinity(0)
    if pin_planner:
        cores = sorted(all_cores)
        if len(cores) < 2:
            raise SystemExit('--pin-planner needs at least 2 cores')
        for process in processes:
            planner_process = Path(process.args[0]).name == 'planner_node'
            pin(process, {cores[-1]} if planner_process else set(cores[:-1]))
        os.sched_setaffinity(0, set(cores[:-1]))
    # This process records every message of the run, which a robot's computer would not do:
    # with recorder_idle it takes only the CPU the robot's processes leave (Linux SCHED_IDLE;
    # its messages queue meanwhile and are recorded late, with their stamps).
    if recorder_idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    rclpy.init(args=[])    # this script's own arguments are not ROS arguments
    client = DemoClient(profile, seed, state_topic=launch_args['state_topic'],
                        command_topic=launch_args['command_topic'])
    watcher = CommandWatcher('/planner_node/command_info', period_s)
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    executor.add_node(watcher)
    records = []
    try:
        client.wait_for_graph(executor, launch_args['command_topic'])
        start_s = time.monotonic()
        start_cpu = {p.pid: cpu_seconds(p.pid) for p in processes}
        for episode in range(1, episodes + 1):
            timeout = 120.0 if lockstep else steps * period_s * 3 + 10
            record = client.run_episode(executor, episode, steps, timeout,
                                        bridge_ends=lockstep)
            records.append(record)
            print(f'  episode {episode}: seed {record.seed} return '
                  f'{record.episode_return:.1f} steps {len(record.rewards)}', flush=True)
        wall_s = time.monotonic() - start_s
        cpu_cores = {Path(p.args[0]).name: (cpu_seconds(p.pid) - start_cpu[p.pid]) / wall_s
                     for p in processes}
        client.spin_until(executor, lambda: False, 1.2)  # the last diagnostics
    finally:
        diagnostics = dict(client.diagnostics)
        figures = watcher.figures(records, steps)
        client.destroy_node()
        watcher.destroy_node()
        rclpy.try_shutdown()
        codes = stop_nodes(processes)
        os.sched_setaffinity(0, all_cores)
        if recorder_idle:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    evaluation = read_config(launch_args['bundle']).evaluation
    outcome = summarize([EpisodeResult(r.seed, r.episode_return, r.success, len(r.rewards))
                         for r in records], evaluation.random_return,
                        evaluation.reference_return)
    if any(code not in (0, -signal.SIGINT) for code in codes):
        raise SystemExit(f'a node exited with {codes}')
    return {
        'mode': 'lockstep' if lockstep else 'realtime',
        'planner_params': planner_params,
        'score_mean': outcome['score_mean'],
        'score_stderr': outcome['score_stderr'],
        'success_rate': outcome['success_rate'],
        'episode_returns': outcome['episode_returns'],
        'episode_steps': [len(r.rewards) for r in records],
        'seeds': [r.seed for r in records],
        **figures,
        'cpu_cores': cpu_cores,
        'planner_diagnostics': diagnostics,
    }


def parse_params(text: str) -> dict:
    """'a:=1,b:=2' -> {'a': '1', 'b': '2'} (ROS parameter overrides)."""
    params = {}
    for item in filter(None, text.split(',')):
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise ValueError(f'planner parameter {item!r} must look like name:=value')
        params[name] = value
    return params


def plot(report: dict, path: str) -> None:
    """Score against added plan latency, a line per variant, lockstep as a reference line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, runs in report['realtime'].items():
        added = [run['added_latency_ms'] for run in runs]
        axis.errorbar(added, [run['score_mean'] for run in runs],
                      yerr=[run['score_stderr'] for run in runs], marker='o', capsize=3,
                      label=f'real time, {name}')
    lockstep = report.get('lockstep')
    if lockstep:
        axis.axhline(lockstep['score_mean'], color='gray', linestyle='--', label='lockstep')
        axis.axhline(0.8 * lockstep['score_mean'], color='gray', linestyle=':',
                     label='80% of lockstep')
    axis.set_xlabel('added plan latency (ms)')
    axis.set_ylabel('normalised score')
    axis.set_title(f'{report["robot"]}: score on the robot\'s clock '
                   f'({report["episodes"]} episodes)')
    axis.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    """Parse arguments, run lockstep then each real-time setting, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robot', default='hopper', help='sim.launch.py robot:= value')
    parser.add_argument('--episodes', type=int, default=10)
    parser.add_argument('--steps', type=int, default=None,
                        help='env steps per episode (default: the env\'s limit)')
    parser.add_argument('--added-latency-ms', type=float, nargs='+', default=[0.0])
    parser.add_argument('--variant', action='append', default=[], metavar='NAME=P:=V,...',
                        help='a planner set-up to run in real time (repeatable); default: '
                             'the shipped parameters, named anytime')
    parser.add_argument('--params', default='', metavar='P:=V,...',
                        help='planner parameters of every run, lockstep included (e.g. '
                             'bundle:=PATH); a variant\'s own win')
    parser.add_argument('--bridge-params', default='', metavar='P:=V,...',
                        help='sim bridge parameters of every run (e.g. executor:=events)')
    parser.add_argument('--no-lockstep', action='store_true', help='skip the lockstep run')
    parser.add_argument('--no-realtime', action='store_true', help='only the lockstep run')
    parser.add_argument('--rewards', action='store_true',
                        help='connect the planner to the bridge\'s reward and episode_end')
    parser.add_argument('--pin-planner', action='store_true',
                        help='the planner on the last core, the bridge and this client on the '
                             'others')
    parser.add_argument('--recorder', choices=('idle', 'normal'), default='idle',
                        help='scheduling of this process, which records every message: idle '
                             '(Linux SCHED_IDLE: the CPU the robot\'s processes leave) or '
                             'normal (competing with them)')
    parser.add_argument('--quick', action='store_true',
                        help='2 episodes of 40 steps, eager planner: a smoke run')
    parser.add_argument('--json', default=None)
    parser.add_argument('--plot', default=None, help='PNG of score against added latency')
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error('--episodes must be at least 1')
    if any(not np.isfinite(v) or v < 0 for v in args.added_latency_ms):
        parser.error('--added-latency-ms values must be finite and >= 0')
    variants = {'anytime': {}}
    try:
        shared = parse_params(args.params)
        bridge = parse_params(args.bridge_params)
        for item in args.variant:
            name, sep, params = item.partition('=')
            if not sep or not name:
                parser.error(f'--variant {item!r} must look like NAME=param:=value,...')
            variants[name] = parse_params(params)
    except ValueError as error:
        parser.error(str(error))
    common = dict(shared)
    if args.quick:
        args.episodes, args.steps = 2, 40
        common['backend'] = 'eager'

    report = {'robot': args.robot, 'episodes': args.episodes, 'params': shared,
              'bridge_params': bridge, 'rewards': args.rewards,
              'pin_planner': args.pin_planner, 'recorder': args.recorder,
              'machine': machine(), 'realtime': {}}
    if not args.no_lockstep:
        print('lockstep', flush=True)
        report['lockstep'] = run_graph(args.robot, True, args.episodes, args.steps, common,
                                       args.rewards, args.pin_planner,
                                       args.recorder == 'idle', bridge)
    for name, params in ({} if args.no_realtime else variants).items():
        report['realtime'][name] = []
        for added in args.added_latency_ms:
            print(f'real time, {name}, added latency {added:g} ms', flush=True)
            run = run_graph(args.robot, False, args.episodes, args.steps,
                            {**common, **params, 'added_latency_ms': added}, args.rewards,
                            args.pin_planner, args.recorder == 'idle', bridge)
            run['added_latency_ms'] = added
            if report.get('lockstep'):
                reference = report['lockstep']['score_mean']
                run['score_ratio'] = run['score_mean'] / reference if reference else None
            report['realtime'][name].append(run)

    print('| mode | added ms | score | ratio | success | age p50/p99 | plan age p50/p99 | '
          'no new command | k p50 | CPU cores planner / bridge |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    rows = ([('lockstep', report['lockstep'])] if report.get('lockstep') else []) + [
        (f'real time, {name}', run) for name, runs in report['realtime'].items() for run in runs]
    for label, run in rows:
        print(f'| {label} | {run.get("added_latency_ms", "")} | {run["score_mean"]:.1f} +- '
              f'{run["score_stderr"]:.1f} | {_fmt(run.get("score_ratio"))} | '
              f'{run["success_rate"]:.2f} | {_fmt(run.get("age_p50_periods"))}/'
              f'{_fmt(run.get("age_p99_periods"))} | {_fmt(run.get("plan_age_p50_periods"))}/'
              f'{_fmt(run.get("plan_age_p99_periods"))} | '
              f'{_fmt(run.get("no_new_command_share"))} | {_fmt(run.get("refine_steps_p50"))} | '
              f'{_fmt(run["cpu_cores"].get("planner_node"))} / '
              f'{_fmt(run["cpu_cores"].get("sim_bridge_node"))} |')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    if args.plot:
        plot(report, args.plot)


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.2f}'


if __name__ == '__main__':
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    main()
