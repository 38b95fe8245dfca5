"""Train every network of a method on its Minari dataset and assemble the bundle.

training/train.py and tools/benchmark/benchmark.py call this; it owns the order of work: config ->
data -> networks -> one sanity batch each -> training loops with checkpoints -> bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
import sys

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from diffusion_planner_ros.config import DataConfig, ExperimentConfig
from diffusion_planner_ros.data.minari_io import dataset_env_id, load_minari, read_episodes
from diffusion_planner_ros.data.normalizer import Normalizer
from diffusion_planner_ros.data.sequence import SequenceDataset
from diffusion_planner_ros.diffusion import DDPMSchedule
from diffusion_planner_ros.models import Dims, build_models, method_components
from diffusion_planner_ros.planning.bundle import Bundle, save_bundle
from diffusion_planner_ros.robots import dims_mismatch, profile_for
from diffusion_planner_ros.losses import component_setups
from diffusion_planner_ros.trainer import ComponentTrainer, init_distributed, parameter_checksum


def write_line(text: str) -> None:
    """Write one line to stdout in a single write and flush it.

    The ranks of a distributed run share one stdout. print() writes the text and its newline
    separately, which unbuffered (PYTHONUNBUFFERED, as under the tests) lets another rank's line
    land in between. Flushed at once, so that a run's log file shows where it is and a rank's
    last lines are not lost when the launcher ends the job.
    """
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


def training_data(config: DataConfig, normalizers: dict[str, Normalizer] | None = None
                  ) -> tuple[object, SequenceDataset]:
    """Load the Minari dataset a data config names, and its windows as training draws them."""
    minari_dataset = load_minari(config.dataset_id)
    episodes = read_episodes(minari_dataset, config.drop_nonfinite)
    return minari_dataset, SequenceDataset(
        episodes, config.condition, config.discount, config.returns_scale, normalizers,
        start_fraction=config.start_fraction, span_goal_switches=config.span_goal_switches)


def train_method(config: ExperimentConfig, out: str | Path, bundle_dir: str | Path | None = None,
                 only: list[str] | None = None, progress: bool = True,
                 start_from: Bundle | None = None) -> Path | None:
    """Train the networks of ``config.method.name`` (or ``only`` those); return the bundle path.

    Checkpoints go to <out>/checkpoints and a run resumes from them; final weights go to
    <out>/weights. The bundle is written once every network of the method has weights.
    ``start_from`` supplies the networks not trained now, and its normalisation (for example a
    shipped bundle that gets a critic: ``only=['critic']``).
    """
    out = Path(out)
    bundle_dir = Path(bundle_dir) if bundle_dir else out / 'bundle'
    method = config.method.name
    components = method_components(config)
    unknown = sorted(set(only or ()) - set(components))
    if unknown:
        raise ValueError(f'{method} has no network(s) {unknown}; it has {list(components)}')
    if start_from is not None and start_from.method != method:
        raise ValueError(f'start_from holds a {start_from.method} bundle, not {method}')
    context, device = init_distributed(config.training.device)
    torch.manual_seed(config.training.seed)
    log = write_line if context.is_main else (lambda *args: None)
    log(f'{method}: device {device}, world size {context.world_size}, run folder {out}')

    # Data. Networks taken from a bundle were trained in its units: train the others in them too.
    minari_dataset, data = training_data(
        config.data, start_from.normalizers if start_from is not None else None)
    env_id = config.data.env_id or dataset_env_id(minari_dataset)
    dims = Dims(data.obs_dim, data.action_dim, data.cond_dim)
    space = minari_dataset.spec.action_space
    log(f'{config.data.dataset_id}: {data.num_transitions} transitions, dims {dims}')
    # The robot the bundle will record: the one it started from, or the profile of the data.
    robot = start_from.robot if start_from is not None and not config.data.robot_profile \
        else profile_for(config.data.robot_profile, env_id)
    if robot is not None and dims_mismatch(robot, dims.obs, dims.action):
        raise ValueError(f'{dims_mismatch(robot, dims.obs, dims.action)} (the data\'s): set '
                         'data.robot_profile')
    log(f'robot profile: {robot.name if robot is not None else "none (data.robot_profile)"}')

    # Networks; those trained by an earlier run start from their final weights.
    models = {name: model.to(device) for name, model in build_models(config, dims).items()}
    weights_dir = out / 'weights'
    wanted = [name for name in components if not only or name in only]
    if start_from is not None and context.is_main:
        weights_dir.mkdir(parents=True, exist_ok=True)
        for name in set(components) & set(start_from.models) - set(wanted):
            state = start_from.models[name].state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      str(weights_dir / f'{name}.safetensors'))
    if context.world_size > 1:
        dist.barrier()
    for name in components:
        path = weights_dir / f'{name}.safetensors'
        if name not in wanted and path.is_file():
            models[name].load_state_dict(load_file(str(path)))
    schedule = DDPMSchedule(config.schedule, device)
    setups = component_setups(config, data, schedule, models)

    # One forward/backward sanity batch per network before the long loops.
    rng = np.random.default_rng(config.training.seed)
    for name in wanted:
        batch = {k: v.to(device) for k, v in setups[name].sample_batch(rng).items()}
        loss = setups[name].loss_fn(models[name], batch)
        loss.backward()
        models[name].zero_grad(set_to_none=True)
        log(f'sanity batch {name}: loss {loss.item():.4f}')

    # Loops, in the method's order.
    train_cfg = config.training
    for name in wanted:
        setup = setups[name]
        if setup.steps == 0:
            continue
        trainer = ComponentTrainer(name, models[name], setup.loss_fn, setup.sample_batch,
                                   train_cfg.learning_rate, device, out / 'checkpoints',
                                   context, setup.ema_decay, setup.warmup_loss_fn,
                                   setup.warmup_steps)
        if trainer.try_resume():
            log(f'{name}: resumed at step {trainer.step}')
        # Without a bar (a log file, CI) each log_every steps leave a line instead.
        losses = trainer.train(setup.steps, train_cfg.seed, train_cfg.log_every,
                               train_cfg.checkpoint_every, progress=progress,
                               log=None if progress else log)
        write_line(f'rank {context.rank} {name} checksum {parameter_checksum(trainer.model):.6f}')
        if context.is_main:
            weights_dir.mkdir(parents=True, exist_ok=True)
            final = trainer.final_model()
            save_file({k: v.detach().cpu().contiguous() for k, v in final.state_dict().items()},
                      str(weights_dir / f'{name}.safetensors'))
            # A checkpoint from before the history was kept resumes with none: keep the old curve.
            if losses:
                (weights_dir / f'{name}.losses.json').write_text(json.dumps(losses) + '\n')
                log(f'{name}: final loss {losses[-1]:.4f}')

    # The bundle, once every network has weights.
    written = None
    if context.is_main:
        files = {name: weights_dir / f'{name}.safetensors' for name in components}
        missing = [name for name, path in files.items() if not path.is_file()]
        if missing:
            log(f'bundle not written yet: {", ".join(missing)} still untrained')
        else:
            for name, path in files.items():
                models[name].load_state_dict(load_file(str(path)))
            written = save_bundle(bundle_dir, config, env_id, dims, space.low, space.high,
                                  data.normalizers, models, robot)
            log(f'bundle written to {bundle_dir}')
    if context.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return written
