"""The same functions, written in the ops that ONNX Runtime's CPU kernels run fastest.

The ONNX path (planning/accelerate.py) exports a rewritten copy of each stage module; eager and
CUDA-graph paths run the modules as they are. Each rewrite computes the same function to float
rounding and was chosen by measurement on the 2-core CPU of docs/latency.md (one thread):

- Mish on exp (ExpMish): ONNX Runtime's Softplus kernel is scalar; it took 12 us on 1024 floats
  against about 3 us for these six element-wise ops.
- Conv1d as a Conv2d of height 1 (Conv1dAs2d): ONNX Runtime runs 2-D convolutions in its
  blocked NCHWc layout and 1-D ones through im2col; at the U-Net's sizes (2 x 128 channels x 4
  steps, kernel 5) the 2-D form took 38 us per convolution against 69 us.
- GroupNorm's scale and shift as (C, L) tensors (GroupNormFullAffine): a Mul of (2, 64, 8) by
  (64, 1) took 1.6 us, by (64, 8) 0.6 us; the export folds the expansion into constants.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class ExpMish(nn.Module):
    """Mish, x tanh(softplus(x)), written with exp and arithmetic only.

    With n = e^x (e^x + 2), tanh(softplus(x)) = n / (n + 2). x is clamped at 20 inside the exp,
    where both forms are x to float precision.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply Mish element-wise."""
        e = torch.exp(torch.clamp(x, max=20.0))
        n = e * (e + 2.0)
        return x * (n / (n + 2.0))


class Conv1dAs2d(nn.Module):
    """A Conv1d (B, C, L) -> (B, C', L') run as a Conv2d over (B, C, 1, L), same weights."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != 'zeros':
            raise ValueError(f'Conv1dAs2d covers plain convolutions, not {conv}')
        # (C', C, k) -> (C', C, 1, k)
        self.weight = nn.Parameter(conv.weight.detach().unsqueeze(2).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding = (1, conv.stride[0]), (0, conv.padding[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve x (B, C, L); returns (B, C', L')."""
        # (B, C, L) -> (B, C, 1, L) -> conv -> (B, C', 1, L') -> (B, C', L')
        y = F.conv2d(x.unsqueeze(2), self.weight, self.bias, self.stride, self.padding)
        return y.squeeze(2)


class GroupNormFullAffine(nn.Module):
    """A GroupNorm over (B, C, L) whose scale and shift are expanded to (C, L) per call."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        if not norm.affine:
            raise ValueError(f'GroupNormFullAffine covers affine GroupNorm, not {norm}')
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x (B, C, L) per group, then scale and shift per channel."""
        y = F.group_norm(x, self.groups, None, None, self.eps)
        shape = x.shape[1:]  # (C, L)
        return y * self.weight[:, None].expand(shape) + self.bias[:, None].expand(shape)


def onnx_friendly(module: nn.Module) -> nn.Module:
    """Return a copy of ``module`` with its layers rewritten as above (the module is kept)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Mish):
                setattr(parent, name, ExpMish())
            elif type(child) is nn.Conv1d:
                setattr(parent, name, Conv1dAs2d(child))
            elif type(child) is nn.GroupNorm:
                setattr(parent, name, GroupNormFullAffine(child))
    return module
