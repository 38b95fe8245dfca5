"""Training of a method's networks: the loop, EMA, checkpoints with resume, DDP.

Each network trains with the loss and batches its method gives it (losses.py). Checkpoints are
safetensors (model, EMA, optimiser tensors) plus JSON (step, optimiser groups), so resuming
never unpickles anything.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

COMPONENTS = ('prior', 'diffuser', 'inverse_dynamics', 'value', 'critic', 'transition', 'reward',
              'policy')


@dataclass
class DistributedContext:
    """Rank and world size; world_size 1 means plain single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group started by torchrun (if any) and pick this rank's device."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    use_cuda = device_name == 'cuda' or (device_name == 'auto' and torch.cuda.is_available())
    if device_name == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    if world_size == 1:
        return DistributedContext(), torch.device('cuda' if use_cuda else 'cpu')
    context = DistributedContext(int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                                 world_size)
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
        return context, torch.device('cuda', context.local_rank)
    return context, torch.device('cpu')


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights: shadow <- decay * shadow + (1 - decay) * current."""
        for shadow, current in zip(self.model.state_dict().values(),
                                   model.state_dict().values()):
            if shadow.dtype.is_floating_point:
                shadow.lerp_(current, 1.0 - self.decay)
            else:
                shadow.copy_(current)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state['state'].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f'{index}.{key}'] = value.detach().cpu().contiguous()
            else:
                scalars[f'{index}.{key}'] = value
    return tensors, {'param_groups': state['param_groups'], 'scalars': scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    entries: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split('.', 1)
        entries.setdefault(int(index), {})[key] = value
    for name, value in meta['scalars'].items():
        index, key = name.split('.', 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({'state': entries, 'param_groups': meta['param_groups']})


class ComponentTrainer:
    """Adam training of one model with optional EMA, periodic checkpoints and resume."""

    def __init__(self, name: str, model: nn.Module, loss_fn: Callable, sample_batch: Callable,
                 learning_rate: float, device: torch.device, checkpoint_dir: Path,
                 context: DistributedContext, ema_decay: float | None = None,
                 warmup_loss_fn: Callable | None = None, warmup_steps: int = 0):
        self.name, self.device, self.context = name, device, context
        self.model = model.to(device)
        self.ema = EMA(self.model, ema_decay) if ema_decay is not None else None
        self.network = self.model
        if context.world_size > 1:
            ids = [device.index] if device.type == 'cuda' else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn, self.sample_batch = loss_fn, sample_batch
        # The first warmup_steps steps (counted from step 0 across resumes) use warmup_loss_fn.
        self.warmup_loss_fn, self.warmup_steps = warmup_loss_fn, warmup_steps
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.step = 0
        # The logged losses since step 0; a checkpoint carries them across a resume.
        self.losses: list[float] = []

    def _paths(self) -> tuple[Path, Path]:
        return (self.checkpoint_dir / f'{self.name}.safetensors',
                self.checkpoint_dir / f'{self.name}.json')

    def save_checkpoint(self) -> None:
        """Write model, EMA and optimiser state (main rank only)."""
        if not self.context.is_main:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f'model.{k}': v.detach().cpu().contiguous()
                   for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f'ema.{k}': v.detach().cpu().contiguous()
                            for k, v in self.ema.model.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer)
        tensors.update({f'optim.{k}': v for k, v in opt_tensors.items()})
        weights, meta = self._paths()
        save_file(tensors, str(weights))
        meta.write_text(json.dumps({'step': self.step, 'optimizer': opt_meta,
                                    'losses': self.losses}) + '\n')

    def try_resume(self) -> bool:
        """Load the checkpoint of this component if there is one."""
        weights, meta_path = self._paths()
        if not (weights.is_file() and meta_path.is_file()):
            return False
        tensors = load_file(str(weights))
        meta = json.loads(meta_path.read_text())

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.model.load_state_dict(part('model.'))
        if self.ema is not None:
            self.ema.model.load_state_dict(part('ema.'))
        _restore_optimizer(self.optimizer, part('optim.'), meta['optimizer'])
        self.step = int(meta['step'])
        # Checkpoints written before the history was kept have none.
        self.losses = [float(v) for v in meta.get('losses', [])]
        return True

    def train(self, steps: int, seed: int, log_every: int, checkpoint_every: int,
              progress: bool = True,
              log: Callable[[str], None] | None = None) -> list[float]:
        """Run until ``steps`` gradient steps in total; returns the losses logged since step 0.

        ``log`` gets one line per ``log_every`` steps (step, mean loss, seconds per step): the
        record a run without a progress bar leaves in its log file.
        """
        # Each rank and each resume point draws its own batches.
        rng = np.random.default_rng([seed, self.context.rank, self.step])
        torch.manual_seed(seed * 1009 + self.context.rank * 7919 + self.step)
        self.network.train()
        running = []
        since = time.perf_counter()
        bar = tqdm(total=steps, initial=self.step, desc=f'train {self.name}',
                   disable=not (progress and self.context.is_main))
        while self.step < steps:
            batch = {k: v.to(self.device) for k, v in self.sample_batch(rng).items()}
            warming = self.warmup_loss_fn is not None and self.step < self.warmup_steps
            loss = (self.warmup_loss_fn if warming else self.loss_fn)(self.network, batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f'{self.name} loss became {loss.item()} at step {self.step}')
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            running.append(loss.item())
            bar.update(1)
            if self.step % log_every == 0 or self.step == steps:
                self.losses.append(float(np.mean(running)))
                bar.set_postfix(loss=f'{self.losses[-1]:.4f}')
                if log is not None and self.context.is_main:
                    now = time.perf_counter()
                    log(f'{self.name} step {self.step}/{steps}: loss {self.losses[-1]:.4f}, '
                        f'{(now - since) / len(running):.3f} s/step')
                    since = now
                running = []
            if self.step % checkpoint_every == 0 or self.step == steps:
                self.save_checkpoint()
        bar.close()
        self.network.eval()
        return list(self.losses)

    def final_model(self) -> nn.Module:
        """Return the weights to ship: the EMA copy when there is one."""
        return self.ema.model if self.ema is not None else self.model


def parameter_checksum(model: nn.Module) -> float:
    """Sum of all parameters: equal across DDP ranks when they stayed in sync."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))
