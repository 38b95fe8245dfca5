#!/usr/bin/env python3
"""Train the prior, the diffuser and the inverse dynamics on a Minari dataset; write a bundle.

Usage:
    python training/train.py --config config/pointmaze_umaze.yaml
    python training/train.py --config config/pointmaze_umaze.yaml --only diffuser
    torchrun --nproc_per_node 2 training/train.py --config config/pointmaze_umaze.yaml

Checkpoints go to <out>/checkpoints and a run resumes from them; the bundle is written to
--bundle (default <out>/bundle) once all three models are trained.
"""

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from diffusion_planner_ros.config import load_config
from diffusion_planner_ros.data.minari_io import dataset_env_id, load_minari, read_episodes
from diffusion_planner_ros.data.sequence import SequenceDataset
from diffusion_planner_ros.diffusion import DDPMSchedule
from diffusion_planner_ros.planning.bundle import Dims, build_models, save_bundle
from diffusion_planner_ros.trainer import (COMPONENTS, ComponentTrainer, diffusion_loss,
                                           init_distributed, inverse_dynamics_loss,
                                           parameter_checksum, prior_loss)


def main() -> None:
    """Train what was asked for and assemble the bundle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='YAML experiment config')
    parser.add_argument('--out', default=None, help='run folder (default runs/<config name>)')
    parser.add_argument('--bundle', default=None, help='bundle folder (default <out>/bundle)')
    parser.add_argument('--only', action='append', choices=COMPONENTS,
                        help='train only this model (repeatable)')
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override a config value, e.g. training.prior_steps=100')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    # Config.
    config = load_config(args.config, args.set)
    out = Path(args.out or Path('runs') / Path(args.config).stem)
    bundle_dir = Path(args.bundle) if args.bundle else out / 'bundle'
    context, device = init_distributed(config.training.device)
    torch.manual_seed(config.training.seed)
    if context.is_main:
        print(f'device {device}, world size {context.world_size}, run folder {out}')

    # Data.
    minari_dataset = load_minari(config.data.dataset_id)
    env_id = config.data.env_id or dataset_env_id(minari_dataset)
    data = SequenceDataset(read_episodes(minari_dataset), config.data.condition,
                           config.data.discount, config.data.returns_scale)
    dims = Dims(data.obs_dim, data.action_dim, data.cond_dim)
    space = minari_dataset.spec.action_space
    if context.is_main:
        print(f'{config.data.dataset_id}: {data.num_transitions} transitions, dims {dims}')

    # Models.
    models = build_models(config, dims)
    schedule = DDPMSchedule(config.schedule, device)
    train_cfg = config.training
    window = config.data.history + config.data.horizon
    setups = {
        'prior': (prior_loss, partial(data.sample_windows, batch_size=train_cfg.batch_size,
                                      length=window), train_cfg.prior_steps, None),
        'diffuser': (partial(diffusion_loss, schedule=schedule,
                             condition_dropout=train_cfg.condition_dropout),
                     partial(data.sample_windows, batch_size=train_cfg.batch_size,
                             length=config.data.horizon),
                     train_cfg.diffuser_steps, train_cfg.ema_decay),
        'inverse_dynamics': (inverse_dynamics_loss,
                             partial(data.sample_transitions, batch_size=train_cfg.batch_size),
                             train_cfg.inverse_dynamics_steps, None),
    }
    wanted = [name for name in COMPONENTS if (not args.only or name in args.only)]

    # One forward/backward sanity batch per model before the long loops.
    rng = np.random.default_rng(train_cfg.seed)
    for name in wanted:
        loss_fn, sample_batch, _, _ = setups[name]
        model = models[name].to(device)
        batch = {k: v.to(device) for k, v in sample_batch(rng).items()}
        loss = loss_fn(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if context.is_main:
            print(f'sanity batch {name}: loss {loss.item():.4f}')

    # Loops.
    weights_dir = out / 'weights'
    for name in wanted:
        loss_fn, sample_batch, steps, ema_decay = setups[name]
        if steps == 0:
            continue
        trainer = ComponentTrainer(name, models[name], loss_fn, sample_batch,
                                   train_cfg.learning_rate, device, out / 'checkpoints',
                                   context, ema_decay)
        if trainer.try_resume() and context.is_main:
            print(f'{name}: resumed at step {trainer.step}')
        losses = trainer.train(steps, train_cfg.seed, train_cfg.log_every,
                               train_cfg.checkpoint_every, progress=not args.no_progress)
        final = trainer.final_model()
        print(f'rank {context.rank} {name} checksum {parameter_checksum(trainer.model):.6f}')
        if context.is_main:
            weights_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in final.state_dict().items()},
                      str(weights_dir / f'{name}.safetensors'))
            (weights_dir / f'{name}.losses.json').write_text(json.dumps(losses) + '\n')
            print(f'{name}: final loss {losses[-1] if losses else float("nan"):.4f}')

    # Save the bundle once every model has weights.
    if context.is_main:
        files = {name: weights_dir / f'{name}.safetensors' for name in COMPONENTS}
        if all(path.is_file() for path in files.values()):
            for name, path in files.items():
                models[name].load_state_dict(load_file(str(path)))
            save_bundle(bundle_dir, config, env_id, dims, space.low, space.high,
                        data.normalizers, models)
            print(f'bundle written to {bundle_dir}')
        else:
            missing = [name for name, path in files.items() if not path.is_file()]
            print(f'bundle not written yet: {", ".join(missing)} still untrained')
    if context.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
