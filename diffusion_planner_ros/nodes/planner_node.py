"""planner_node: receding-horizon Trajectory Diffuser planning over ROS 2.

Subscribes ``joint_states`` and ``goal_pose``, and ``reward`` and ``episode_end`` where the robot
reports them. A returns-conditioned bundle's target decreases by each reward, as in the paper;
on a robot that reports none it decreases by an even share per step (target_return over the
bundle's target_steps). It starts again at each episode's end, or, on a robot that sends no
``episode_end``, when states resume after a pause of 0.2 s (and 10 control periods) or more.

Publishes ``commands``, ``plan``, ``plan_markers``, ``~/plan_latency_ms`` (one per plan) and
``~/command_info`` (one per command, when someone listens: the stamp of the state the command
was computed from, the stamp of the state its plan was made for, the refinement steps that plan
ran, its plan time in ms, then the command's values), and /diagnostics.

What it does with them, in lockstep and in real time (when a state starts a plan, the plan's
budget, the plan tracked from each state, the plan lead, repeats and the state timeout), is
planning/commanding.py's CommandLoop, plain Python; this node is its parameters, lifecycle,
topics and diagnostics.

A lifecycle node (configure, activate, deactivate, cleanup); it drives itself to active unless
``autostart`` is false. A worker thread plans, so the executor is never blocked; with
plan_process (real time only) the plans themselves run in a child process
(planning/plan_process.py), so the executor that sends each state's command never waits for
the planning thread's interpreter lock. The node spins on SingleThreadedExecutor or, with
executor:=events, on rclpy's EventsExecutor (nodes/runner.py); never on MultiThreadedExecutor,
which misbehaves with the PyPI rclpy wheels.

Bad input never reaches the planner: joint_states with missing, duplicate or non-finite
profile joints, or with stamps that go backwards or leap ahead, are dropped with a throttled
warning that names the problem and counted in /diagnostics; a state far outside the training
data, or any planning failure, commands zero.
"""

from __future__ import annotations

import gc
import math
import threading
import time
import traceback

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseStamped
from nav_msgs.msg import Path
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from visualization_msgs.msg import Marker, MarkerArray

from diffusion_planner_ros.planning import load_bundle, load_planner
from diffusion_planner_ros.planning.defaults import (bundle_robot, bundle_settings,
                                                     SAMPLER_PARAMETERS)
from diffusion_planner_ros.planning.plan_process import PlanProcess
from diffusion_planner_ros.planning.commanding import CommandLoop, plan_budget_ms
from diffusion_planner_ros.planning.realtime import PlanLead
from diffusion_planner_ros.planning.returns import episode_target, ReturnsToGo, target_steps
from diffusion_planner_ros.planning.threads import configure_threads
from diffusion_planner_ros.nodes.runner import (
    declare_executor, declare_thread_priority, LAST_MESSAGE_ACK_S, spin_node, subscribe_with_info)
from diffusion_planner_ros.nodes.timing import arrival
from diffusion_planner_ros.robots import robot_world
from diffusion_planner_ros.scheduling import rank_planning_threads, thread_ids

WARN_PERIOD_S = 2.0


def _float_param(description: str, low: float, high: float) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, floating_point_range=[
        FloatingPointRange(from_value=low, to_value=high, step=0.0)])


def _int_param(description: str, low: int, high: int) -> ParameterDescriptor:
    return ParameterDescriptor(description=description,
                               integer_range=[IntegerRange(from_value=low, to_value=high, step=1)])


class PlannerNode(LifecycleNode):
    """ROS I/O around the planner of the bundle's method (Trajectory Diffuser or a baseline).

    A lifecycle node: configure loads the bundle and profile and warms the planner up (captures
    its stages), activate starts commanding, deactivate commands zero and stops, cleanup frees
    the model. With ``autostart`` (the default) it configures and activates itself at start.
    """

    def __init__(self):
        super().__init__('planner_node')
        declare_executor(self)
        declare_thread_priority(self)
        # The threads that send commands; the planner's, started from here on, run lower.
        self._sender_threads = thread_ids()
        p = self.declare_parameter
        # The bundle is the one required parameter. Parameters declared with a type and no
        # value are unset until given: unset means the bundle's value (or its robot's).
        unset = Parameter.Type
        p('bundle', '', ParameterDescriptor(description='bundle directory', read_only=True))
        p('profile', '', ParameterDescriptor(
            description="robot profile YAML (or a name in config/robots); empty: the robot "
                        "the bundle records. A profile must match the bundle's joints, "
                        'actuators and env', read_only=True))
        p('device', 'auto', ParameterDescriptor(description='auto, cpu or cuda', read_only=True))
        p('plan_rate_hz', unset.DOUBLE, _float_param(
            "replans per second (unset: the control rate over the bundle's "
            'planner.replan_every)', 0.1, 1000.0))
        p('control_rate_hz', unset.DOUBLE, _float_param(
            "commands per second (unset: 1 / the profile's control_period_s)", 1.0, 2000.0))
        p('state_timeout_s', 0.5, _float_param('zero command when the state is older', 0.01, 60.))
        p('plan_budget_ms', -1.0, ParameterDescriptor(
            description='real time: the time a plan may take; the refinement runs as many of '
                        'its k steps as fit (-1 = 3/4 of a plan period, 0 = always k)'))
        p('added_latency_ms', 0.0, ParameterDescriptor(
            description='real time: hold each plan\'s command back this long, as a slower '
                        'computer would (benchmarks); the plan budget counts it'))
        p('plan_lead_steps', 0, _int_param(
            'real time: plan from the state predicted this many control steps ahead, through '
            "the commands in flight, with the bundle's transition model (-1 = from the measured "
            'state-to-command time, 0 = from the state as it came: tracking scored higher '
            'without a lead, docs/realtime.md)', -1, 1000))
        p('track_plan', True, ParameterDescriptor(
            description="real time: each step's command is inverse dynamics from the state "
                        "measured then to the plan's state for the step's end (false: the "
                        "plan's own actions by time); needs a bundle with inverse dynamics",
            read_only=True))
        p('target_return', unset.DOUBLE, ParameterDescriptor(
            description='returns-to-go target of a returns-conditioned bundle (unset: the '
                        "bundle's planner.target_return)"))
        p('refine_steps', unset.INTEGER, _int_param(
            "diffusion refinement steps k (0 = prior only; unset: the bundle's)", 0, 1000))
        p('guidance_scale', unset.DOUBLE, _float_param(
            "classifier-free guidance w (unset: the bundle's)", 0.0, 100.0))
        p('warm_start_steps', unset.INTEGER, _int_param(
            'replan from the previous plan noised to this many levels (0 = every plan afresh; '
            "unset: the bundle's)", 0, 1000))
        p('candidates', unset.INTEGER, _int_param(
            'plans drawn per replan, the best kept by the bundle\'s critic or objective (1 = one '
            "plan; unset: the bundle's)", 1, 1024))
        p('noise_scale', unset.DOUBLE, _float_param(
            "alpha of Algorithm 1 line 20 (0 = posterior mean; unset: the bundle's)", 0.0, 10.0))
        p('backend', 'auto', ParameterDescriptor(
            description='auto (CUDA graph on a GPU, ONNX Runtime on a CPU when installed), '
                        'eager, onnx or cuda_graph', read_only=True))
        p('torch_threads', 1, ParameterDescriptor(
            description='inference threads for planning, torch and ONNX Runtime (0 = their '
                        'default); one leaves a core to the executor and the other processes',
            read_only=True,
            integer_range=[IntegerRange(from_value=0, to_value=256, step=1)]))
        p('plan_thread_nice', 0, ParameterDescriptor(
            description='nice value added to the planning thread, or the planning process '
                        '(Linux), so the executor that sends each state\'s command runs first '
                        'when both are ready; 0 plans at the node\'s priority (nice 10 '
                        'measured no different on Hopper and Walker2d here: docs/realtime.md)',
            read_only=True,
            integer_range=[IntegerRange(from_value=0, to_value=19, step=1)]))
        p('plan_process', False, ParameterDescriptor(
            description='real time: plan in a child process, so the executor that sends each '
                        "state's command never waits for the planning thread's interpreter "
                        'lock (false: a thread of this process, which measured as well on '
                        '2 cores: docs/realtime.md; lockstep always plans in a thread)',
            read_only=True))
        p('lockstep', False, ParameterDescriptor(
            description='one command per received state (deterministic runs with a lockstep '
                        'bridge) instead of the control timer', read_only=True))
        p('autostart', True, ParameterDescriptor(
            description='configure and activate at start; false waits for lifecycle '
                        'transitions (~/change_state)', read_only=True))
        self.planner = None
        self.plans = None  # what plans: self.planner, or a PlanProcess in real time
        self.loop = None  # the plan and command logic (CommandLoop), once configured
        # Timers run on this machine's steady clock; only the stamps of what the node publishes
        # follow the ROS clock (sim time under use_sim_time, as in the sim graph).
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._active = False
        # Held while a command is published and while activity changes, so no plan's command
        # can follow the zero of a deactivation or a stop.
        self._command_lock = threading.Lock()
        self._entities: list = []
        self._worker = None
        self._configure_error = ''
        self._last_warn: dict[str, float] = {}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.get_parameter('autostart').value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ValueError(self._configure_error)
            self.trigger_activate()

    # Lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the bundle and profile, warm the planner up, create the topics."""
        try:
            self._configure()
        except (ValueError, OSError) as error:
            self._configure_error = str(error)
            self.get_logger().error(f'cannot configure: {error}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception:  # noqa: B902 - a bug: say where, and stay unconfigured
            self._configure_error = traceback.format_exc()
            self.get_logger().error(f'cannot configure:\n{self._configure_error}')
            self._release()
            return TransitionCallbackReturn.ERROR
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start commanding: a fresh episode, the timers, the publishers."""
        result = super().on_activate(state)
        self.plans.reset()
        self.loop.forget_plan()
        if not self.lockstep:
            self._start_timers(self._setting('control_rate_hz'), self._setting('plan_rate_hz'))
        with self._command_lock:
            self._active = self.loop.active = True
        self.get_logger().info('active: commanding')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Command zero and stop commanding; the model stays loaded."""
        self._stop_commanding()
        self.get_logger().info('inactive: commanded zero')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the topics."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Command zero if active, then free everything."""
        self._stop_commanding()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Command zero if possible and go back to unconfigured."""
        self._stop_commanding()
        self._release()
        return super().on_error(state)

    def _configure(self) -> None:
        self._validate_start_parameters()
        gp = self.get_parameter
        configure_threads(gp('torch_threads').value)
        bundle = load_bundle(gp('bundle').value)
        self.profile = bundle_robot(bundle, gp('profile').value)
        self._defaults = bundle_settings(bundle, self.profile)
        problem = self._timeout_problem(gp('state_timeout_s').value,
                                        self._setting('control_rate_hz'))
        if problem:
            raise ValueError(problem)
        sampler = {name: self._given(name) for name in SAMPLER_PARAMETERS
                   if self._given(name) is not None}
        options = dict(device=gp('device').value, backend=gp('backend').value,
                       threads=gp('torch_threads').value, **sampler,
                       **self._replan_option(gp('lockstep').value, bundle.config.planner,
                                             self._setting('control_rate_hz'),
                                             self._setting('plan_rate_hz')))
        self.planner = load_planner(bundle, **options)
        self.grid, self.kinematics = robot_world(self.profile)
        self.lockstep = gp('lockstep').value
        plan_budget = plan_budget_ms(gp('plan_budget_ms').value, self._setting('plan_rate_hz'),
                                     self.lockstep)
        anytime = plan_budget is not None and hasattr(self.planner, 'warm_up_anytime')
        if gp('plan_process').value and not self.lockstep:
            # Plans in a child process: the executor that sends each state's command never
            # waits for the planning thread's interpreter lock. This process's planner tracks
            # and predicts (numpy) and checks runtime changes; it never plans.
            self.plans = PlanProcess(bundle.path, options, nice=gp('plan_thread_nice').value,
                                     anytime=anytime, torch_threads=gp('torch_threads').value)
        else:
            self.plans = self.planner
            # Capture the stages now, so activation commands at once; with a budget, every
            # step count is captured and measured before the first plan.
            self.planner.warm_up()
            if anytime:
                self.planner.warm_up_anytime()
        # The paper's protocol where the robot reports rewards (the sim bridge does): the
        # returns-to-go target decreases by each reward and starts again at each episode's end;
        # where it reports none, by an even share per step.
        returns_to_go = ReturnsToGo(episode_target(self.planner, self._setting('target_return')),
                                    target_steps(self.planner))
        self.loop = CommandLoop(
            self.planner, self.plans, lockstep=self.lockstep,
            tracking=not self.lockstep and gp('track_plan').value and self.planner.can_track,
            lead=self._plan_lead(gp('plan_lead_steps').value), returns_to_go=returns_to_go,
            plan_budget=plan_budget,
            added_latency_s=1e-3 * gp('added_latency_ms').value,
            state_timeout_s=gp('state_timeout_s').value,
            control_rate_hz=self._setting('control_rate_hz'),
            plan_rate_hz=self._setting('plan_rate_hz'),
            plan_thread_nice=gp('plan_thread_nice').value, send=self._publish_command,
            warn=self._warn, log=self.get_logger().warning, on_plan=self._on_plan)
        self._last_latency_log = 0.0
        self._control_timer = None

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        # Lifecycle publishers send only while the node is active.
        self.command_pub = self.create_lifecycle_publisher(Float64MultiArray, 'commands', reliable)
        self.path_pub = self.create_lifecycle_publisher(Path, 'plan', 10)
        self.marker_pub = self.create_lifecycle_publisher(MarkerArray, 'plan_markers', 10)
        self.timing_pub = self.create_lifecycle_publisher(Float64, '~/plan_latency_ms', 10)
        self.command_info_pub = self.create_lifecycle_publisher(
            Float64MultiArray, '~/command_info', reliable)
        # Diagnostics go out in every state: an inactive planner still reports.
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._entities = [
            self.command_pub, self.path_pub, self.marker_pub, self.timing_pub,
            self.command_info_pub, self.diag_pub,
            # SingleThreadedExecutor serves ready subscriptions in this order: a step's reward
            # (sent before the state it led to) is spent before that state wakes the planner,
            # and an episode's last state is taken before its end. The events executor serves
            # them in the order they arrived, which is the bridge's order on one host.
            self.create_subscription(Float64, 'reward', self._on_reward, reliable),
            subscribe_with_info(self, JointState, 'joint_states', self._on_joint_state, 10),
            self.create_subscription(String, 'episode_end', self._on_episode_end, reliable),
            self.create_subscription(PoseStamped, 'goal_pose', self._on_goal, 10),
            self.create_timer(1.0, self._publish_diagnostics, clock=self._steady),
        ]
        # Everything allocated so far (models, messages, modules) lives as long as the node:
        # keep it out of the collector's full passes, which would otherwise pause planning.
        gc.freeze()
        self._worker = threading.Thread(target=self.loop.run, daemon=True)
        self._worker.start()
        rank_planning_threads(self._sender_threads)
        self.get_logger().info(
            f'planning with {gp("bundle").value} on {self.planner.device}, profile '
            f'{self.profile.name}, method {self.planner.method}, '
            f'k={self.planner.config.refine_steps}, '
            f'replan every {self.planner.config.replan_every} control steps, '
            f'{self._backend_text()}')

    def _stop_commanding(self) -> None:
        """Leave the active state: no more plans' commands, then one zero command."""
        if self.loop is None:
            return
        self._stop_timers()
        self.loop.forget_plan()
        with self._command_lock:
            if self._active:
                self._active = self.loop.active = False
                self._send(np.zeros(self.planner.action_dim))
                # A publisher destroyed right after its last message can take that message
                # with it: wait (bounded) until every reliable subscriber has acknowledged it.
                self.command_pub.wait_for_all_acked(Duration(seconds=LAST_MESSAGE_ACK_S))

    def _release(self) -> None:
        """Stop the worker and destroy what configure created."""
        if self._worker is not None:
            self.loop.stop()
            self._worker.join(timeout=5.0)
            self._worker = None
        if self.plans is not None and self.plans is not self.planner:
            self.plans.close()
        self.plans = None
        for entity in self._entities:
            if isinstance(entity, LifecyclePublisher):
                self.destroy_lifecycle_publisher(entity)
            elif isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            else:
                self.destroy_timer(entity)
        self._entities = []
        self.planner = self.loop = None

    def _backend_text(self) -> str:
        for reason in self.plans.fallback_reasons:
            self.get_logger().warning(reason)
        where = (f'in planning process {self.plans.pid}' if self.plans is not self.planner
                 else 'in a thread of this process')
        return f'backend {self.plans.backend} ({self.plans.backend_reason}), {where}'

    # Parameters -----------------------------------------------------------------------------
    def _validate_start_parameters(self) -> None:
        if not self.get_parameter('bundle').value:
            raise ValueError("parameter 'bundle' must be set")
        if self.get_parameter('device').value not in ('auto', 'cpu', 'cuda'):
            raise ValueError("parameter 'device' must be auto, cpu or cuda")
        problem = self._latency_problem(self.get_parameter('plan_budget_ms').value,
                                        self.get_parameter('added_latency_ms').value,
                                        self.get_parameter('state_timeout_s').value)
        if problem:
            raise ValueError(problem)

    @staticmethod
    def _timeout_problem(state_timeout_s: float, control_rate_hz: float) -> str:
        if state_timeout_s <= 1.0 / control_rate_hz:
            return (f"parameter 'state_timeout_s' ({state_timeout_s} s) must exceed one control "
                    f'period ({1.0 / control_rate_hz:.4f} s)')
        return ''

    @staticmethod
    def _latency_problem(budget_ms: float, added_ms: float, state_timeout_s: float) -> str:
        """Say what is wrong with a plan budget or added latency ('' when both are valid).

        Both must be finite; the budget -1 (auto), 0 (none) or positive; neither may reach
        state_timeout_s, past which the command would be zero anyway.
        """
        limit_ms = 1e3 * state_timeout_s
        if not math.isfinite(budget_ms) or (budget_ms < 0 and budget_ms != -1.0):
            return (f"parameter 'plan_budget_ms' ({budget_ms}) must be -1 (3/4 of a plan "
                    'period), 0 (no budget) or a positive number of milliseconds')
        if budget_ms >= limit_ms:
            return (f"parameter 'plan_budget_ms' ({budget_ms} ms) must be below "
                    f'state_timeout_s ({limit_ms:g} ms)')
        if not math.isfinite(added_ms) or added_ms < 0:
            return f"parameter 'added_latency_ms' ({added_ms}) must be a finite number >= 0"
        if added_ms >= limit_ms:
            return (f"parameter 'added_latency_ms' ({added_ms} ms) must be below "
                    f'state_timeout_s ({limit_ms:g} ms)')
        return ''

    def _plan_lead(self, steps: int) -> PlanLead:
        """Return the plan lead for the parameter's value; ValueError names what is wrong.

        Auto (-1) needs the bundle's transition model and quietly means none without one; a
        fixed lead needs it too. The lead may not pass the horizon: the plan must still hold
        actions past the commands in flight.
        """
        if steps > 0 and not self.planner.can_predict:
            raise ValueError(f"parameter 'plan_lead_steps' ({steps}) needs a bundle with a "
                             'transition model (method.transition_model); this one has none')
        limit = self.planner.horizon - 2
        if steps > limit:
            raise ValueError(f"parameter 'plan_lead_steps' ({steps}) must be at most {limit} "
                             f'(the horizon {self.planner.horizon} less two)')
        if self.lockstep or not self.planner.can_predict:
            steps = 0
        return PlanLead(steps, max(limit, 0))

    def _given(self, name: str):
        """Return a parameter's value, None where it is unset."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _setting(self, name: str):
        """Return a parameter's value, or the bundle's where the parameter is unset."""
        value = self._given(name)
        return self._defaults[name] if value is None else value

    def _replan_every(self, control_rate_hz: float, plan_rate_hz: float) -> int:
        return max(1, int(round(control_rate_hz / plan_rate_hz)))

    def _replan_option(self, lockstep: bool, planner_config, control_rate_hz: float,
                       plan_rate_hz: float) -> dict:
        """Planner option for the actions executed per plan.

        In real time the rates set it; lockstep runs the bundle's own protocol
        (planner.replan_every), as training/evaluate.py does, whatever the rates. A bundle
        that follows one plan per goal (planner.track_states, Diffuser's maze protocol) keeps
        its 1 too: it decides itself when to plan again, the rates only how often it is asked.
        """
        if lockstep or planner_config.track_states:
            return {}
        return {'replan_every': self._replan_every(control_rate_hz, plan_rate_hz)}

    def _stop_timers(self) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
        self._control_timer = None

    def _start_timers(self, control_rate_hz: float, plan_rate_hz: float) -> None:
        self._stop_timers()
        tick_s = self.loop.set_rates(control_rate_hz, plan_rate_hz, commanding=True)
        self._control_timer = self.create_timer(tick_s, self.loop.tick, clock=self._steady)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Check a runtime change as a whole and apply it only if all of it is valid.

        rclpy has already checked types, ranges and read-only flags from the descriptors; this
        checks what depends on the bundle. A rejected change keeps every old value. Before
        configure there is no bundle yet: configure checks the values then.
        """
        new = {param.name: param.value for param in params}
        gp = self.get_parameter
        if self.planner is None:
            # Before configure the bundle, and so any unset rate, is not known yet: configure
            # checks the rates then.
            control_rate = new.get('control_rate_hz', self._given('control_rate_hz'))
            plan_rate = new.get('plan_rate_hz', self._given('plan_rate_hz'))
        else:
            control_rate = new.get('control_rate_hz', self._setting('control_rate_hz'))
            plan_rate = new.get('plan_rate_hz', self._setting('plan_rate_hz'))
        problem = (control_rate is not None and self._timeout_problem(
            new.get('state_timeout_s', gp('state_timeout_s').value),
            control_rate)) or self._latency_problem(
            new.get('plan_budget_ms', gp('plan_budget_ms').value),
            new.get('added_latency_ms', gp('added_latency_ms').value),
            new.get('state_timeout_s', gp('state_timeout_s').value))
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        if self.planner is None:
            return SetParametersResult(successful=True)
        changes = {name: new[name] for name in ('refine_steps', 'guidance_scale', 'noise_scale')
                   if name in new}
        if {'control_rate_hz', 'plan_rate_hz'} & set(new):
            changes.update(self._replan_option(self.lockstep, self.planner.config,
                                               control_rate, plan_rate))
        for name in ('warm_start_steps', 'candidates'):
            if name in new:
                changes[name] = new[name]
        lead = self.loop.lead
        try:
            if 'plan_lead_steps' in new:
                lead = self._plan_lead(new['plan_lead_steps'])
            if changes:
                # Captured stages are rebuilt; they capture again on the next plan. This
                # process's planner checks the change; a planning process then takes it.
                self.planner.reconfigure(**changes)
                if self.plans is not self.planner:
                    self.plans.reconfigure(**changes)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        loop = self.loop
        loop.lead = lead
        loop.set_state_timeout(new.get('state_timeout_s', loop.state_timeout_s))
        if 'target_return' in new:
            loop.returns_to_go.retarget(episode_target(self.planner, new['target_return']))
        if {'plan_budget_ms', 'plan_rate_hz'} & set(new):
            budget = plan_budget_ms(new.get('plan_budget_ms', gp('plan_budget_ms').value),
                                    plan_rate, self.lockstep)
            if budget is not None and loop.plan_budget is None \
                    and hasattr(self.planner, 'warm_up_anytime'):
                self.plans.warm_up_anytime()
            loop.plan_budget = budget
        loop.added_latency_s = 1e-3 * new.get('added_latency_ms', 1e3 * loop.added_latency_s)
        if {'control_rate_hz', 'plan_rate_hz', 'state_timeout_s'} & set(new):
            if not self.lockstep and self._active:
                self._start_timers(control_rate, plan_rate)
            else:
                loop.set_rates(control_rate, plan_rate, commanding=False)
        return SetParametersResult(successful=True)

    # Input ---------------------------------------------------------------------------------
    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -math.inf) >= WARN_PERIOD_S:
            self._last_warn[key] = now
            self.get_logger().warning(message)

    def _on_joint_state(self, msg: JointState, info: dict | None) -> None:
        try:
            observation = self.profile.observation_from_joint_state(
                msg.name, msg.position, msg.velocity)
        except ValueError as error:
            self.loop.reject(str(error))
            return
        # A state's age counts from its arrival: in a backlog handled late, only the newest is
        # fresh.
        self.loop.on_state(observation, msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec,
                           None if info is None else arrival(info))

    def _on_goal(self, msg: PoseStamped) -> None:
        goal = np.array([msg.pose.position.x, msg.pose.position.y])
        if not np.all(np.isfinite(goal)):
            self._warn('goal:nan', f'dropped goal_pose with NaN or inf: {goal.tolist()}')
            return
        if self.grid is not None and not self.grid.is_free(goal):
            self._warn('goal:outside',
                       f'dropped goal_pose {goal.tolist()}: outside the free maze cells')
            return
        if self.loop.set_goal(goal):
            self.get_logger().info(f'new goal {goal.round(3).tolist()}')

    def _on_reward(self, msg: Float64) -> None:
        if not math.isfinite(msg.data):
            self._warn('reward:nan', f'dropped reward {msg.data}')
            return
        self.loop.spend_reward(msg.data)

    def _on_episode_end(self, msg: String) -> None:
        self.loop.end_episode()
        self.get_logger().info(f'episode ended ({msg.data}): starting afresh')

    # Output --------------------------------------------------------------------------------
    def _publish_command(self, action, source: tuple | None = None) -> None:
        """Send ``action`` while active.

        source (None: no plan's command) is what ~/command_info reports: the stamp of the state
        the command was computed from, the stamp of the state its plan was made for, the steps
        that plan refined and its plan time in ms.
        """
        if action is None:
            return
        with self._command_lock:
            if self._active:
                self._send(action, source)

    def _send(self, action, source: tuple | None = None) -> None:
        self.loop.sent(action, source)
        action = np.clip(np.nan_to_num(action, nan=0.0, posinf=0.0, neginf=0.0),
                         self.planner.bundle.action_low, self.planner.bundle.action_high)
        values = [float(a) for a in action]
        self.command_pub.publish(Float64MultiArray(data=values))
        if source is not None and self.command_info_pub.get_subscription_count():
            self.command_info_pub.publish(Float64MultiArray(data=[*source, *values]))

    def _on_plan(self, plan, goal) -> None:
        """Publish a plan's time, path and markers to whoever listens."""
        if self.timing_pub.get_subscription_count():
            self.timing_pub.publish(Float64(data=plan.timings_ms['total']))
        want_path = self.path_pub.get_subscription_count() > 0
        want_markers = self.marker_pub.get_subscription_count() > 0
        if not (want_path or want_markers):
            return
        stamp = self.get_clock().now().to_msg()
        frame = self.profile.fixed_frame
        refined = self.kinematics.body_positions(plan.refined_states)
        if want_path:
            path = Path()
            path.header.stamp, path.header.frame_id = stamp, frame
            for x, y, z in refined:
                pose = PoseStamped()
                pose.header = path.header
                pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = x, y, z
                pose.pose.orientation.w = 1.0
                path.poses.append(pose)
            self.path_pub.publish(path)
        if want_markers:
            markers = MarkerArray()
            if plan.prior_states is not None:
                prior = self.kinematics.body_positions(plan.prior_states)
                markers.markers.append(_line('prior', 0, prior, (0.2, 0.4, 1.0), stamp, frame))
            markers.markers.append(_line('refined', 1, refined, (0.1, 0.9, 0.2), stamp, frame))
            if goal is not None:
                markers.markers.append(_sphere('goal', 2, (goal[0], goal[1], refined[0, 2]),
                                               (1.0, 0.2, 0.2), stamp, frame))
            self.marker_pub.publish(markers)

    def _publish_diagnostics(self) -> None:
        loop = self.loop
        age = loop.state_age_s()
        values = {
            'plans': str(loop.plan_latency.count),
            'plan_latency_p50_ms': _fmt(loop.plan_latency.percentile(50)),
            'plan_latency_p99_ms': _fmt(loop.plan_latency.percentile(99)),
            'state_to_command_p50_ms': _fmt(loop.command_latency.percentile(50)),
            'state_to_command_p99_ms': _fmt(loop.command_latency.percentile(99)),
            'overhead_p50_ms': _fmt(loop.overhead.percentile(50)),
            'overhead_p99_ms': _fmt(loop.overhead.percentile(99)),
            'plan_wait_p50_ms': _fmt(loop.plan_wait.percentile(50)),
            'executor_delay_p50_ms': _fmt(loop.executor_delay.percentile(50)),
            'executor_delay_p99_ms': _fmt(loop.executor_delay.percentile(99)),
            'plan_wait_p99_ms': _fmt(loop.plan_wait.percentile(99)),
            'deadline_misses': str(loop.deadline_misses),
            'rejected_states': str(loop.rejected_states),
            'returns_to_go': _fmt(loop.returns_to_go.value),
            'plan_budget_ms': _fmt(loop.plan_budget),
            'refine_steps_p50': _fmt(loop.refine_steps_used.percentile(50)),
            'refine_steps_min': _fmt(loop.refine_steps_used.percentile(0)),
            'refine_reason': loop.refine_reason,
            'plan_lead_steps_p50': _fmt(loop.lead_steps_used.percentile(50)),
            'plan_thread_nice': str(loop.plan_nice),
            'executor': self.get_parameter('executor').value,
            'plan_process': 'none' if self.plans is self.planner else str(self.plans.pid),
            'rewards_received': str(loop.returns_to_go.rewards),
            'state_age_s': _fmt(age),
            'active': str(self._active).lower(),
        }
        stale = age > loop.state_timeout_s
        level = DiagnosticStatus.WARN if stale and self._active else DiagnosticStatus.OK
        message = ('inactive' if not self._active else 'state stale' if stale else 'ok')
        status = DiagnosticStatus(level=level, name='planner_node: planning',
                                  hardware_id=self.profile.name, message=message,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)
        if loop.plan_latency.count and time.monotonic() - self._last_latency_log >= 10:
            self._last_latency_log = time.monotonic()
            self.get_logger().info(
                f'plan latency p50/p99 {values["plan_latency_p50_ms"]}/'
                f'{values["plan_latency_p99_ms"]} ms, state-to-command p50/p99 '
                f'{values["state_to_command_p50_ms"]}/{values["state_to_command_p99_ms"]} ms')

    def stop(self) -> None:
        """Command zero if active (no plan's command can follow it), then free everything."""
        self._stop_commanding()
        self._release()


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.3f}'


def _line(ns, marker_id, points, rgb, stamp, frame) -> Marker:
    marker = Marker(ns=ns, id=marker_id, type=Marker.LINE_STRIP, action=Marker.ADD)
    marker.header.stamp, marker.header.frame_id = stamp, frame
    marker.scale.x = 0.04
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = (*rgb, 1.0)
    marker.pose.orientation.w = 1.0
    marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in points]
    return marker


def _sphere(ns, marker_id, xyz, rgb, stamp, frame) -> Marker:
    marker = Marker(ns=ns, id=marker_id, type=Marker.SPHERE, action=Marker.ADD)
    marker.header.stamp, marker.header.frame_id = stamp, frame
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = map(float, xyz)
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = 0.25
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = (*rgb, 0.8)
    return marker


def main(args=None) -> None:
    """Entry point of the planner_node console script."""
    spin_node(PlannerNode, args)


if __name__ == '__main__':
    main()
