#!/usr/bin/env python3
"""Train a method's networks on a Minari dataset and write its bundle.

Usage:
    python training/train.py --config config/pointmaze_umaze.yaml
    python training/train.py --config config/pointmaze_umaze.yaml --method diffuser
    python training/train.py --config config/pointmaze_umaze.yaml --only diffuser
    torchrun --nproc_per_node 2 training/train.py --config config/pointmaze_umaze.yaml
    python training/train.py --from-bundle models/pointmaze_umaze --only critic \
        --set method.critic=true --bundle runs/umaze_critic/bundle

With --from-bundle the bundle's recorded config (plus --set) replaces --config, and the networks
not named by --only come from that bundle: the last example adds a candidate critic to the
shipped bundle without retraining the rest.

Methods: trajectory_diffuser (default), decision_diffuser, diffuser, dmemm, bc. Checkpoints go
to <out>/checkpoints and a run resumes from them; the bundle is written to --bundle (default
<out>/bundle) once every network of the method is trained.
"""

import argparse
from pathlib import Path

from diffusion_planner_ros.config import METHODS, load_config, with_overrides
from diffusion_planner_ros.pipeline import train_method
from diffusion_planner_ros.planning.bundle import load_bundle
from diffusion_planner_ros.trainer import COMPONENTS


def main() -> None:
    """Read the config, then train."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='YAML experiment config')
    source.add_argument('--from-bundle', metavar='BUNDLE',
                        help='start from this bundle: its config, its networks not in --only')
    parser.add_argument('--method', choices=METHODS, default=None,
                        help='override method.name of the config')
    parser.add_argument('--out', default=None, help='run folder (default runs/<config name>)')
    parser.add_argument('--bundle', default=None, help='bundle folder (default <out>/bundle)')
    parser.add_argument('--only', action='append', choices=COMPONENTS,
                        help='train only this network (repeatable)')
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override a config value, e.g. training.prior_steps=100')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    overrides = args.set + ([f'method.name={args.method}'] if args.method else [])
    start_from = None
    if args.from_bundle:
        start_from = load_bundle(args.from_bundle)
        config = with_overrides(start_from.config, overrides)
        out = Path(args.out or Path('runs') / f'{Path(args.from_bundle).name}_extended')
    else:
        config = load_config(args.config, overrides)
        out = Path(args.out or Path('runs') / Path(args.config).stem)
    train_method(config, out, args.bundle, args.only, progress=not args.no_progress,
                 start_from=start_from)


if __name__ == '__main__':
    main()
