"""One validated dataclass per component; YAML in, dataclasses inside.

Every field is documented where it is declared. ``__post_init__`` checks each value and says what
would be right. ``load_config`` rejects unknown keys so that a typo never falls back silently to a
default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

CONDITION_KINDS = ('goal', 'returns')
BETA_SCHEDULES = ('cosine', 'linear')
PREDICTIONS = ('epsilon', 'x0')
TRANSITION_GUIDES = ('log_likelihood', 'normalised')
DEVICES = ('auto', 'cpu', 'cuda')
# How the planner runs its stages (planning/accelerate.py); 'auto' picks the fastest available.
BACKENDS = ('auto', 'eager', 'onnx', 'cuda_graph')
# trajectory_diffuser: prior + k-step refinement (the product); decision_diffuser: states-only
# diffusion from pure noise with classifier-free guidance; diffuser: joint state-action diffusion
# with a learned return model's gradient; dmemm: Diffuser trained with DMEMM's modulation losses
# and sampled with reward + transition guidance; bc: an MLP policy.
METHODS = ('trajectory_diffuser', 'decision_diffuser', 'diffuser', 'dmemm', 'bc')
JOINT_METHODS = ('diffuser', 'dmemm')
# Methods whose bundle may carry a critic to rank candidate plans (method.critic); Diffuser and
# DMEMM rank by the objective their sampler is guided by.
CRITIC_METHODS = ('trajectory_diffuser', 'decision_diffuser')
# DMEMM's denoised trajectory for the modulation losses (MethodConfig.modulation_trajectory).
MODULATION_TRAJECTORIES = ('one_shot', 'predicted')


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class DataConfig:
    """Which dataset to learn from and how it is cut into training windows."""

    # Minari dataset id, local (made by training/collect.py) or remote (D4RL/...).
    dataset_id: str = 'dpr/pointmaze-umaze-v0'
    # gymnasium env id used for evaluation; empty takes the id recorded in the dataset.
    env_id: str = ''
    # 'goal' conditions on a goal position (navigation), 'returns' on returns-to-go.
    condition: str = 'goal'
    # Planned states per plan, the current state included (H in the paper).
    horizon: int = 16
    # Past states the prior reads before rolling out (h in the paper).
    history: int = 4
    # Discount of the returns-to-go (the paper uses 1.0).
    discount: float = 1.0
    # Returns-to-go are divided by this before entering a network (the condition scale).
    returns_scale: float = 1.0
    # State dimensions the goal stands for (PointMaze: x, y), for goal inpainting and display.
    goal_state_dims: tuple = (0, 1)
    # Episodes holding NaN or inf refuse the dataset; true drops them (named in a warning).
    drop_nonfinite: bool = False
    # Share of each batch of windows drawn from windows that begin at an episode's first
    # state. A robot starts from rest; with uniform windows the start-up transient is a few
    # percent of the data (docs/walker2d.md). 0 samples uniformly.
    start_fraction: float = 0.0
    # Robot profile (a name in config/robots or a YAML path) the bundle records, so a planner
    # node runs from the bundle alone; empty takes the shipped profile of the data's env, if
    # there is one.
    robot_profile: str = ''
    # Goal data: let a training window span the data's goal switches (Diffuser's maze windows,
    # which need horizons longer than most goal segments). False keeps every window inside one
    # goal segment, so that its hindsight goal is one the data's controller was pursuing.
    span_goal_switches: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.dataset_id), 'data.dataset_id must name a Minari dataset')
        _require(self.condition in CONDITION_KINDS,
                 f'data.condition {self.condition!r} must be one of {CONDITION_KINDS}')
        _require(self.horizon >= 2, f'data.horizon {self.horizon} must be at least 2')
        _require(self.history >= 1, f'data.history {self.history} must be at least 1')
        _require(0.0 < self.discount <= 1.0,
                 f'data.discount {self.discount} must be in (0, 1]')
        _require(self.returns_scale > 0.0,
                 f'data.returns_scale {self.returns_scale} must be positive')
        self.goal_state_dims = tuple(int(d) for d in self.goal_state_dims)
        _require(all(d >= 0 for d in self.goal_state_dims),
                 f'data.goal_state_dims {self.goal_state_dims} must be state indices')
        _require(0.0 <= self.start_fraction <= 1.0,
                 f'data.start_fraction {self.start_fraction} must be in [0, 1]')


@dataclass
class PriorConfig:
    """GPT-style autoregressive prior over [state, condition] tokens (paper section 4.2)."""

    # Transformer blocks.
    n_layer: int = 4
    # Attention heads per block; must divide n_embd.
    n_head: int = 4
    # Token width.
    n_embd: int = 256
    # Dropout on attention, residual and embedding paths during training.
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _require(self.n_layer >= 1, f'prior.n_layer {self.n_layer} must be at least 1')
        _require(self.n_head >= 1 and self.n_embd % self.n_head == 0,
                 f'prior.n_embd {self.n_embd} must be a multiple of prior.n_head {self.n_head}')
        _require(0.0 <= self.dropout < 1.0, f'prior.dropout {self.dropout} must be in [0, 1)')


@dataclass
class UnetConfig:
    """Temporal U-Net noise model (Diffuser's architecture, paper appendix A.4)."""

    # Channels of the first level; level i has dim * dim_mults[i].
    dim: int = 32
    # Channel multipliers; the horizon is halved len(dim_mults) - 1 times.
    dim_mults: tuple = (1, 2, 4, 8)
    # Temporal convolution kernel size (odd).
    kernel_size: int = 5
    # Width of the diffusion-time embedding and of the condition embedding (64 each in the paper).
    embed_dim: int = 64
    # Hidden width of the two-layer embedding MLPs (128 in the paper).
    embed_hidden: int = 128
    # GroupNorm groups; must divide dim.
    groups: int = 8

    def __post_init__(self) -> None:
        self.dim_mults = tuple(int(m) for m in self.dim_mults)
        _require(len(self.dim_mults) >= 1 and all(m >= 1 for m in self.dim_mults),
                 f'unet.dim_mults {self.dim_mults} must be positive integers')
        _require(self.kernel_size % 2 == 1, f'unet.kernel_size {self.kernel_size} must be odd')
        _require(self.groups >= 1, f'unet.groups {self.groups} must be at least 1')
        _require(self.dim >= 1 and self.dim % self.groups == 0,
                 f'unet.dim {self.dim} must be a positive multiple of unet.groups {self.groups}')
        _require(self.embed_dim >= 1 and self.embed_hidden >= 1,
                 'unet.embed_dim and unet.embed_hidden must be positive')

    @property
    def downsample_factor(self) -> int:
        """How many times shorter the deepest level is than the horizon."""
        return 2 ** (len(self.dim_mults) - 1)


@dataclass
class ScheduleConfig:
    """DDPM noise schedule."""

    # K, the number of diffusion steps used in training (100 in the paper).
    num_steps: int = 100
    # 'cosine' (Diffuser, Decision Diffuser) or 'linear' (DDPM).
    beta_schedule: str = 'cosine'
    # Clip the predicted x0 to the normalised range [-1, 1] in each reverse step.
    clip_denoised: bool = True
    # What the noise model outputs: 'epsilon' (the noise, DDPM) or 'x0' (the clean sample, the
    # official Diffuser's maze setting, predict_epsilon False).
    prediction: str = 'epsilon'

    def __post_init__(self) -> None:
        _require(self.num_steps >= 1, f'schedule.num_steps {self.num_steps} must be at least 1')
        _require(self.prediction in PREDICTIONS,
                 f'schedule.prediction {self.prediction!r} must be one of {PREDICTIONS}')
        _require(self.beta_schedule in BETA_SCHEDULES,
                 f'schedule.beta_schedule {self.beta_schedule!r} must be one of {BETA_SCHEDULES}')


@dataclass
class InverseDynamicsConfig:
    """MLP a_t = f(s_t, s_t+1) (paper Eq. 3)."""

    # Hidden width.
    hidden_dim: int = 256
    # Hidden layers.
    n_hidden: int = 2

    def __post_init__(self) -> None:
        _require(self.hidden_dim >= 1 and self.n_hidden >= 1,
                 'inverse_dynamics.hidden_dim and n_hidden must be positive')


@dataclass
class MethodConfig:
    """Which planner a run trains, and DMEMM's training objective (its paper, Eq. 11-12)."""

    # One of METHODS.
    name: str = 'trajectory_diffuser'
    # Eq. 11: weight each window's diffusion loss by its cumulative reward / (H r_max).
    reward_weighting: bool = True
    # Eq. 12 trade-offs lambda_tr and lambda_rd (paper: 0.1 and 0.05); 0 removes the term.
    transition_weight: float = 0.1
    reward_weight: float = 0.05
    # Levels i evaluated per window in Eq. 8's sum; 0 = all k (exact, k U-Net passes per window),
    # m > 0 = m levels drawn uniformly, sum scaled by k / m (unbiased, m passes). one_shot only.
    modulation_terms: int = 4
    # Levels k of Eq. 9-10 are drawn from 1 .. modulation_levels (0 = 1 .. K as in the paper).
    # Eq. 8 divides by sqrt(abar_k): near k = K it multiplies the noise model's error by up to
    # ~1e4 and the modulation terms swamp the diffusion loss (measured: loss 6e2 -> 3e5 on the
    # tiny test set with K = 100), so by default only the low-noise levels modulate.
    modulation_levels: int = 10
    # The denoised trajectory L_tr and L_rd score: 'one_shot' is Eq. 8 (forward-noised copies
    # of tau_0 through the noise model, summed); 'predicted' is the network's own clean estimate
    # from tau_k (its x0 output, or x0 read back from its eps), one pass per window. With x0
    # prediction it is bounded at every level, so modulation_levels 0 (the paper's whole range)
    # trains on trajectories, not on Eq. 8's amplified noise; read back from eps it divides by
    # sqrt(abar_k) as Eq. 8 does.
    modulation_trajectory: str = 'one_shot'
    # The U-Net's step at which L_tr and L_rd join its loss (0: from the first step, as the
    # paper's Algorithm 2); before it the loss is the reward-weighted diffusion loss alone.
    # Modulating a network that does not denoise yet teaches it plans that jump off their start
    # and onto their goal (docs/benchmark.md, DMEMM on the maze protocol).
    modulation_start: int = 0
    # Trajectory / Decision Diffuser: also train a critic (the value network's down path and
    # head, on clean state windows) that picks the best of planner.candidates plans, as the
    # official Trajectory Diffuser code ranks its 32 candidates.
    critic: bool = False
    # Trajectory / Decision Diffuser: the bundle also carries a transition model s' = f(s, a)
    # (DMEMM's ensemble, section dynamics) that predicts the state a late command will act on,
    # from the state now and the commands already in flight (latency-aware planning).
    transition_model: bool = False
    # Diffuser / DMEMM on goal data: the window's last state is given to the noise model in
    # training as its first state is (start and goal inpainting, Diffuser's maze protocol),
    # and a plan's last state is the goal at rest (its other state dimensions zero).
    goal_inpainting: bool = False

    def __post_init__(self) -> None:
        _require(self.name in METHODS, f'method.name {self.name!r} must be one of {METHODS}')
        _require(not self.critic or self.name in CRITIC_METHODS,
                 f'method.critic applies to {CRITIC_METHODS}, not {self.name} (Diffuser and '
                 'DMEMM rank candidates by their guidance objective)')
        _require(not self.transition_model or self.name in CRITIC_METHODS,
                 f'method.transition_model applies to {CRITIC_METHODS}, not {self.name} '
                 '(DMEMM carries its transition ensemble anyway)')
        _require(self.transition_weight >= 0.0 and self.reward_weight >= 0.0,
                 'method.transition_weight and method.reward_weight must be >= 0')
        _require(self.modulation_terms >= 0,
                 f'method.modulation_terms {self.modulation_terms} must be >= 0')
        _require(self.modulation_levels >= 0,
                 f'method.modulation_levels {self.modulation_levels} must be >= 0')
        _require(self.modulation_start >= 0,
                 f'method.modulation_start {self.modulation_start} must be >= 0')
        _require(self.modulation_trajectory in MODULATION_TRAJECTORIES,
                 f'method.modulation_trajectory {self.modulation_trajectory!r} must be one of '
                 f'{MODULATION_TRAJECTORIES}')
        _require(not self.goal_inpainting or self.name in JOINT_METHODS,
                 f'method.goal_inpainting applies to {JOINT_METHODS}, not {self.name} '
                 '(planner.inpaint_goal writes the goal into a states-only plan)')


@dataclass
class DynamicsConfig:
    """DMEMM's transition ensemble and reward model (MLPs)."""

    # Members of the Gaussian transition ensemble.
    ensemble_size: int = 5
    hidden_dim: int = 200
    n_hidden: int = 3
    # The reward model's output: 'sigmoid' (bounded, as its [0, 1] target) or 'linear' (what
    # bundles written before the bounded head were trained with; they load as 'linear').
    reward_head: str = 'sigmoid'

    def __post_init__(self) -> None:
        _require(self.ensemble_size >= 1,
                 f'dynamics.ensemble_size {self.ensemble_size} must be >= 1')
        _require(self.hidden_dim >= 1 and self.n_hidden >= 1,
                 'dynamics.hidden_dim and n_hidden must be positive')
        _require(self.reward_head in ('sigmoid', 'linear'),
                 f"dynamics.reward_head {self.reward_head!r} must be 'sigmoid' or 'linear'")


@dataclass
class PolicyConfig:
    """Behaviour-cloning MLP a = pi(s, condition)."""

    hidden_dim: int = 256
    n_hidden: int = 2

    def __post_init__(self) -> None:
        _require(self.hidden_dim >= 1 and self.n_hidden >= 1,
                 'policy.hidden_dim and n_hidden must be positive')


@dataclass
class TrainConfig:
    """Optimisation of the three models."""

    # Gradient steps per model; 0 skips that model.
    prior_steps: int = 20000
    diffuser_steps: int = 40000
    inverse_dynamics_steps: int = 10000
    # Diffuser's return model J, DMEMM's transition ensemble and reward model (each), BC policy.
    value_steps: int = 10000
    # The candidate-ranking critic (method.critic).
    critic_steps: int = 3000
    dynamics_steps: int = 10000
    policy_steps: int = 10000
    batch_size: int = 32
    learning_rate: float = 2e-4
    # Probability p of dropping the condition (classifier-free guidance, paper Eq. 6-7).
    condition_dropout: float = 0.5
    # EMA decay of the diffuser weights; the bundle ships the EMA weights.
    ema_decay: float = 0.995
    # Steps between checkpoints and between log lines.
    checkpoint_every: int = 5000
    log_every: int = 500
    seed: int = 0
    # 'auto' picks CUDA when present.
    device: str = 'auto'

    def __post_init__(self) -> None:
        for name in ('prior_steps', 'diffuser_steps', 'inverse_dynamics_steps', 'value_steps',
                     'critic_steps', 'dynamics_steps', 'policy_steps'):
            _require(getattr(self, name) >= 0, f'training.{name} must be >= 0')
        _require(self.batch_size >= 1, f'training.batch_size {self.batch_size} must be >= 1')
        _require(self.learning_rate > 0, 'training.learning_rate must be positive')
        _require(0.0 <= self.condition_dropout < 1.0,
                 f'training.condition_dropout {self.condition_dropout} must be in [0, 1)')
        _require(0.0 <= self.ema_decay < 1.0,
                 f'training.ema_decay {self.ema_decay} must be in [0, 1)')
        _require(self.checkpoint_every >= 1 and self.log_every >= 1,
                 'training.checkpoint_every and training.log_every must be positive')
        _require(self.device in DEVICES,
                 f'training.device {self.device!r} must be one of {DEVICES}')


@dataclass
class PlannerConfig:
    """Run-time sampler knobs; a ROS parameter or CLI flag may override each."""

    # k: diffusion levels the prior's trajectory is noised to and denoised from; 0 = prior only.
    refine_steps: int = 5
    # Anytime planning under a budget (real time) never refines with fewer steps than this; a
    # plan that cannot fit them is late rather than unrefined (0 lets the prior's plan through).
    min_refine_steps: int = 0
    # w: classifier-free guidance scale (eps_u + w (eps_c - eps_u)).
    guidance_scale: float = 1.2
    # Scale on the reverse-step noise standard deviation (alpha in Algorithm 1, line 20).
    noise_scale: float = 0.5
    # Control steps between replans; the action chunk covers them.
    replan_every: int = 1
    # Write the goal into the last planned state (inpainting) as well as conditioning on it.
    inpaint_goal: bool = False
    # Target return for returns-conditioned tasks, in env units.
    target_return: float = 0.0
    # Control steps an episode's target_return is spread over when the robot reports no
    # rewards (a real robot has no reward topic): the target then falls by an even share each
    # step instead of by each reward. 0 = the env's time limit (gymnasium's max_episode_steps).
    target_steps: int = 0
    # Diffuser / DMEMM: alpha, the scale of the objective's gradient on each reverse-step mean
    # (Diffuser Algorithm 1; DMEMM Eq. 13); 0 samples without guidance.
    value_guidance_scale: float = 0.1
    # DMEMM: lambda of Eq. 13, the weight of the transition log-likelihood in the guide.
    transition_guidance: float = 1.0
    # DMEMM: the transition term as 'log_likelihood' (Eq. 13: its gradient scales as
    # 1 / sigma^2 of the ensemble, ~1e5 here) or 'normalised' (the log-likelihood times each
    # dimension's sigma^2: a squared error, whose gradient is the gap to the predicted state).
    transition_guide: str = 'log_likelihood'
    # Diffuser / DMEMM: the guide acts at levels below this one only (0: at every level). A
    # model of clean trajectories means nothing on the noisy means of the high levels.
    guide_levels: int = 0
    # Diffuser / DMEMM: the largest move of any entry of a reverse-step mean along the guide,
    # normalised units (0: no limit).
    guide_step_limit: float = 0.0
    # Replan from the previous plan noised to this many levels (Diffuser section 5.4); 0 makes
    # every plan afresh. Diffuser / DMEMM: instead of pure noise. Trajectory Diffuser: the
    # previous plan's states still ahead, extended by the prior, refined from this level
    # instead of refine_steps. Assumes replan_every steps ran since the last plan.
    warm_start_steps: int = 0
    # Decision Diffuser: reverse steps of a plan sampled from noise, strided evenly over the K
    # trained levels (schedule.strided_levels, DDIM's respacing); 0 takes every level.
    sample_steps: int = 0
    # Plans drawn per call; with more than one, one is picked by the objective (Diffuser's J,
    # DMEMM's reward and transition models) or the bundle's critic (method.critic).
    candidates: int = 1
    device: str = 'auto'
    # Stage execution: 'auto' (CUDA graph on a GPU, ONNX Runtime on a CPU when installed, else
    # eager), or one of 'eager', 'onnx', 'cuda_graph' (planning/accelerate.py).
    backend: str = 'auto'
    # CPU threads for inference (torch intra-op, process-wide, and ONNX Runtime; 0 keeps their
    # defaults); 1 leaves the other core of a 2-core robot computer to the ROS executor.
    threads: int = 1
    # Largest accepted |observation| in normalised units ([-1, 1] spans the training data): a
    # state further out is a sensor fault or a robot the bundle knows nothing about, and the
    # planner refuses it instead of extrapolating.
    observation_limit: float = 10.0
    # Diffuser / DMEMM: Diffuser's maze protocol. Plan once, then follow the plan's states with
    # a PD controller, a = p_gain (p' - p) + d_gain (v' - v), from the state measured to the
    # plan's next one (positions: data.goal_state_dims, velocities: the other state dims, one
    # action per position); plan again when the goal changes, the plan has run out, or the
    # robot is more than drift_limit (env units, positions) from the planned path (0: never).
    track_states: bool = False
    track_p_gain: float = 10.0
    track_d_gain: float = 1.0
    drift_limit: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.observation_limit > 0.0,
                 f'planner.observation_limit {self.observation_limit} must be > 0')
        _require(self.refine_steps >= 0, f'planner.refine_steps {self.refine_steps} must be >= 0')
        _require(self.min_refine_steps >= 0,
                 f'planner.min_refine_steps {self.min_refine_steps} must be >= 0')
        _require(self.value_guidance_scale >= 0.0, 'planner.value_guidance_scale must be >= 0')
        _require(self.transition_guidance >= 0.0, 'planner.transition_guidance must be >= 0')
        _require(self.warm_start_steps >= 0,
                 f'planner.warm_start_steps {self.warm_start_steps} must be >= 0')
        _require(self.sample_steps >= 0,
                 f'planner.sample_steps {self.sample_steps} must be >= 0 (0 = every level)')
        _require(self.candidates >= 1, f'planner.candidates {self.candidates} must be >= 1')
        _require(self.guidance_scale >= 0.0, 'planner.guidance_scale must be >= 0')
        _require(self.noise_scale >= 0.0, 'planner.noise_scale must be >= 0')
        _require(self.replan_every >= 1, f'planner.replan_every {self.replan_every} must be >= 1')
        _require(self.target_steps >= 0,
                 f'planner.target_steps {self.target_steps} must be >= 0 (0 = the env\'s limit)')
        _require(self.device in DEVICES,
                 f'planner.device {self.device!r} must be one of {DEVICES}')
        _require(self.backend in BACKENDS,
                 f'planner.backend {self.backend!r} must be one of {BACKENDS}')
        _require(self.threads >= 0, f'planner.threads {self.threads} must be >= 0')
        _require(self.transition_guide in TRANSITION_GUIDES,
                 f'planner.transition_guide {self.transition_guide!r} must be one of '
                 f'{TRANSITION_GUIDES}')
        _require(self.guide_levels >= 0, f'planner.guide_levels {self.guide_levels} must be >= 0')
        for name in ('track_p_gain', 'track_d_gain', 'drift_limit', 'guide_step_limit'):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0.0,
                     f'planner.{name} {value} must be a finite number >= 0')
        _require(not self.track_states or self.replan_every == 1,
                 f'planner.track_states computes every step\'s action: replan_every '
                 f'{self.replan_every} must be 1')


@dataclass
class EvaluationConfig:
    """Reference returns for the D4RL-style normalised score, measured by the project."""

    # Mean return of uniformly random actions under the evaluation protocol.
    random_return: float = 0.0
    # Mean return of the scripted controller that made the data.
    reference_return: float = 1.0
    # The commands that measured the two figures.
    measured_with: str = ''

    def __post_init__(self) -> None:
        _require(self.reference_return != self.random_return,
                 'evaluation.reference_return must differ from evaluation.random_return')


@dataclass
class ExperimentConfig:
    """Everything train.py needs, one section per component."""

    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    inverse_dynamics: InverseDynamicsConfig = field(default_factory=InverseDynamicsConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        factor = self.unet.downsample_factor
        _require(self.data.horizon % factor == 0,
                 f'data.horizon {self.data.horizon} must be a multiple of '
                 f'2**(len(unet.dim_mults) - 1) = {factor}')
        _require(self.planner.refine_steps <= self.schedule.num_steps,
                 f'planner.refine_steps {self.planner.refine_steps} must be at most '
                 f'schedule.num_steps {self.schedule.num_steps}')
        _require(self.planner.sample_steps <= self.schedule.num_steps,
                 f'planner.sample_steps {self.planner.sample_steps} must be at most '
                 f'schedule.num_steps {self.schedule.num_steps}')
        _require(self.planner.warm_start_steps <= self.schedule.num_steps,
                 f'planner.warm_start_steps {self.planner.warm_start_steps} must be at most '
                 f'schedule.num_steps {self.schedule.num_steps}')
        _require(self.planner.replan_every <= self.data.horizon - 1,
                 f'planner.replan_every {self.planner.replan_every} must be below data.horizon '
                 f'{self.data.horizon}: the action chunk comes from one plan')
        _require(not self.method.goal_inpainting or self.data.condition == 'goal',
                 'method.goal_inpainting needs goal data (data.condition goal)')
        _require(not self.planner.track_states or self.method.name in JOINT_METHODS,
                 f'planner.track_states is Diffuser\'s maze protocol ({JOINT_METHODS}); '
                 f'{self.method.name} follows its plans with inverse dynamics')


def _check_type(section: str, name: str, default: Any, value: Any) -> Any:
    """Check a value against the type of the field's default; ints are accepted as floats."""
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is tuple:
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(f'{section}.{name} must be {expected.__name__}, got {value!r}')
    return value


def build_section(cls: type, values: Mapping[str, Any] | None, section: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f'section {section!r} must be a mapping, got {values!r}')
    values = dict(values or {})
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in section {section!r}; '
                         f'known keys are {sorted(defaults)}')
    checked = {name: _check_type(section, name, defaults[name], value)
               for name, value in values.items()}
    return cls(**checked)


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build an ExperimentConfig from nested plain data (parsed YAML or bundle JSON)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f'a config must be a mapping of sections, got {type(raw).__name__}')
    sections = {f.name: f.type for f in fields(ExperimentConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f'unknown section(s) {unknown}; known sections are {sorted(sections)}')
    classes = {f.name: f.default_factory for f in fields(ExperimentConfig)}
    built = {name: build_section(classes[name], raw.get(name), name) for name in classes}
    return ExperimentConfig(**built)


def planner_overrides(items: list[str]) -> dict:
    """Planner settings from 'key=value' strings (no section), as a tool's --set takes them."""
    return apply_overrides({}, [f'planner.{item}' for item in items]).get('planner', {})


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply 'section.key=value' strings (value parsed as YAML) to nested config data."""
    raw = {name: dict(section or {}) for name, section in raw.items()}
    for item in overrides:
        target, sep, value = item.partition('=')
        section, dot, key = target.partition('.')
        if not sep or not dot or not key:
            raise ValueError(f'override {item!r} must look like section.key=value')
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    return raw


def read_config_yaml(path: str | Path, _chain: tuple = ()) -> dict:
    """Parse a config YAML; a top-level ``base: <file>`` is read first and updated key by key.

    The base path is relative to the file naming it, so datasets that differ in a few keys
    (hopper medium vs medium-expert) share one file for the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'config file {path} does not exist')
    with path.open() as stream:
        raw = yaml.safe_load(stream) or {}
    if not isinstance(raw, dict):
        raise ValueError(f'{path}: a config must be a mapping of sections')
    base = raw.pop('base', None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ValueError(f'{path}: base {base!r} loops back to a config that names it')
    merged = read_config_yaml(base_path, (*_chain, path.resolve()))
    for section, values in raw.items():
        values = {} if values is None else values
        if not isinstance(values, dict) or not isinstance(merged.get(section) or {}, dict):
            raise ValueError(f'{path}: section {section!r} must be a mapping')
        merged[section] = {**(merged.get(section) or {}), **values}
    return merged


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (and its base), then apply 'section.key=value' overrides."""
    path = Path(path)
    raw = read_config_yaml(path)
    try:
        raw = apply_overrides(raw, overrides or [])
        return config_from_dict(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{path}: {error}') from error


def with_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Return ``config`` with 'section.key=value' overrides applied (checked like a YAML's)."""
    return config_from_dict(apply_overrides(config_to_dict(config), overrides))


def config_to_dict(config: ExperimentConfig) -> dict:
    """Plain nested data for JSON or YAML."""
    data = asdict(config)
    data['unet']['dim_mults'] = list(config.unet.dim_mults)
    data['data']['goal_state_dims'] = list(config.data.goal_state_dims)
    return data
