#!/usr/bin/env python3
"""Convert a ROS 2 bag (MCAP or sqlite3) into a Minari dataset that train.py accepts.

Usage:
    python training/bag_to_minari.py <bag> --profile pointmaze_umaze --out dpr/my-robot-v0 \
        --goal-topic /episode_goal --reset-topic /episode_goal

Reads joint_states and the command topic (and a reward topic when the bag has one) with the
pure-Python rosbags library, no ROS install needed; resamples them onto the profile's control
period; starts a new episode at each reset message and at each gap; writes the dataset into
MINARI_DATASETS_PATH. The steps are in diffusion_planner_ros/data/bag.py. Any problem (a missing
topic, joints missing from JointState, a bag that does not match the profile, an empty episode)
exits with status 2 and one line that names it, and no dataset is written.
"""

import argparse
import json
import sys

from diffusion_planner_ros.data.bag import BagConversionConfig, convert_bag
from diffusion_planner_ros.robots import load_profile


def main() -> None:
    """Parse the options, convert, print a summary."""
    defaults = BagConversionConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag', help='bag folder (metadata.yaml with .mcap or .db3 files)')
    parser.add_argument('--profile', required=True,
                        help='robot profile: a name in config/robots or a YAML path')
    parser.add_argument('--out', required=True, help='dataset id, e.g. dpr/my-robot-v0')
    parser.add_argument('--state-topic', default=defaults.state_topic)
    parser.add_argument('--command-topic', default=defaults.command_topic)
    parser.add_argument('--goal-topic', default='', help='PoseStamped goal (goal datasets)')
    parser.add_argument('--goal-dims', type=int, nargs='+', default=list(defaults.goal_dims),
                        help='observation dimensions the goal refers to')
    parser.add_argument('--reward-topic', default=defaults.reward_topic,
                        help='Float64 rewards; used when the bag has it')
    parser.add_argument('--reset-topic', default='',
                        help='each message on it starts a new episode')
    parser.add_argument('--period', type=float, default=0.0,
                        help="control period in s (default: the profile's)")
    parser.add_argument('--gap', type=float, default=0.0,
                        help='longest silence inside an episode in s (default: 5 periods)')
    parser.add_argument('--state-stamps', choices=('receive', 'header'),
                        default=defaults.state_stamps)
    parser.add_argument('--min-steps', type=int, default=defaults.min_steps)
    parser.add_argument('--skip-short', action='store_true',
                        help='drop episodes shorter than --min-steps instead of failing')
    args = parser.parse_args()

    try:
        config = BagConversionConfig(
            state_topic=args.state_topic, command_topic=args.command_topic,
            goal_topic=args.goal_topic, reward_topic=args.reward_topic,
            reset_topic=args.reset_topic, period_s=args.period, gap_s=args.gap,
            state_stamps=args.state_stamps, goal_dims=tuple(args.goal_dims),
            min_steps=args.min_steps, skip_short=args.skip_short)
        summary = convert_bag(args.bag, load_profile(args.profile), args.out, config)
    except ValueError as error:
        print(f'bag_to_minari: {error}', file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2))


if __name__ == '__main__':
    main()
