"""Offline check of what refinement does to the prior's plans, on windows of the training data.

The prior rolls out from the true history of each window; the plan is then refined at each k.
Printed per k: RMS error of the planned positions and velocities against the states the data
really reached (normalised units), and the RMS difference between the first action the inverse
dynamics infers from the plan and the one it infers from the true next state.

    python training/check_refinement.py --bundle models/pointmaze_medium --windows 1024
"""

import argparse

import numpy as np
import torch

from diffusion_planner_ros.data.minari_io import load_minari, read_episodes
from diffusion_planner_ros.data.sequence import CONDITIONS, SequenceDataset, STATES
from diffusion_planner_ros.diffusion import DDPMSchedule, refine
from diffusion_planner_ros.planning.bundle import load_bundle


def main() -> None:
    """Parse arguments, roll out, refine, print one row per k."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bundle', required=True)
    parser.add_argument('--windows', type=int, default=1024)
    parser.add_argument('--refine-steps', type=int, nargs='+', default=[0, 3, 5, 10])
    parser.add_argument('--noise-scale', type=float, default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle, 'cpu')
    config = bundle.config
    episodes = read_episodes(load_minari(config.data.dataset_id))
    data = SequenceDataset(episodes, config.data.condition, config.data.discount,
                           config.data.returns_scale, normalizers=bundle.normalizers)
    history, horizon = config.data.history, config.data.horizon
    batch = data.sample_windows(np.random.default_rng(args.seed), args.windows,
                                history + horizon - 1)
    states = batch[STATES].float()          # (B, history + horizon - 1, obs_dim)
    conditions = batch[CONDITIONS].float()  # (B, history + horizon - 1, cond_dim)
    truth = states[:, history - 1:]         # (B, horizon, obs_dim), starts at the current state
    goal_dims = list(config.data.goal_state_dims) or list(range(states.shape[-1]))
    other = [d for d in range(states.shape[-1]) if d not in goal_dims]
    noise_scale = config.planner.noise_scale if args.noise_scale is None else args.noise_scale
    schedule = DDPMSchedule(config.schedule, 'cpu')
    inverse = bundle.models['inverse_dynamics']

    with torch.no_grad():
        rolled, _ = bundle.models['prior'].rollout(
            states[:, :history], conditions[:, :history], horizon - 1,
            hold_condition=config.data.condition == 'goal')
        prior_plan = torch.cat([truth[:, :1], rolled], dim=1)  # (B, horizon, obs_dim)
        true_action = inverse(truth[:, 0], truth[:, 1])
        print('| k | position RMS | other dims RMS | first action RMS |')
        print('|---|---|---|---|')
        for k in args.refine_steps:
            generator = torch.Generator().manual_seed(args.seed)
            plan = refine(bundle.models['diffuser'], schedule, prior_plan, k,
                          conditions[:, -1], config.planner.guidance_scale,
                          {0: truth[:, 0]}, generator, noise_scale)
            error = plan - truth
            action = inverse(plan[:, 0], plan[:, 1])
            print(f'| {k} | {rms(error[..., goal_dims]):.4f} | {rms(error[..., other]):.4f} '
                  f'| {rms(action - true_action):.4f} |')
        # How much the condition steers the prior: the same histories rolled out toward each
        # other window's condition (a prior that ignores its goal gives ~0 here).
        swapped = torch.roll(conditions, shifts=1, dims=0)  # (B, history + horizon - 1, cond)
        moved, _ = bundle.models['prior'].rollout(
            states[:, :history], swapped[:, :history], horizon - 1,
            hold_condition=config.data.condition == 'goal')
        shift = rms((moved - rolled)[..., goal_dims])
        motion = rms(truth[:, 1:, goal_dims] - truth[:, :1, goal_dims])
        print(f'prior rollout, own against another window\'s condition: position RMS {shift:.4f}'
              f' (the data\'s {horizon - 1} steps move {motion:.4f})')


def rms(values: torch.Tensor) -> float:
    """Root mean square over all entries."""
    return float(values.pow(2).mean().sqrt())


if __name__ == '__main__':
    main()
