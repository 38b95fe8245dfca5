"""Min-max normalisation to [-1, 1], fitted on the dataset and saved in the bundle."""

from __future__ import annotations

import numpy as np
import torch

_MIN_RANGE = 1e-6


class Normalizer:
    """Per-dimension affine map of [low, high] onto [-1, 1]."""

    def __init__(self, low: np.ndarray, high: np.ndarray):
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f'normaliser bounds must be two vectors of one shape, got '
                             f'{low.shape} and {high.shape}')
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError('normaliser bounds must be finite')
        if np.any(high < low):
            raise ValueError('normaliser high must be >= low in every dimension')
        self.low = low
        self.high = np.maximum(high, low + _MIN_RANGE)

    @classmethod
    def fit(cls, data: np.ndarray) -> 'Normalizer':
        """Fit the bounds on data of shape (N, dim)."""
        data = np.asarray(data, dtype=np.float64)
        return cls(data.min(axis=0), data.max(axis=0))

    @property
    def dim(self) -> int:
        """Vector size."""
        return self.low.shape[0]

    def normalize(self, x):
        """Map [low, high] to [-1, 1]; numpy in, numpy out; tensor in, tensor out."""
        low, high = self._like(x)
        return 2.0 * (x - low) / (high - low) - 1.0

    def unnormalize(self, x):
        """Map [-1, 1] back to [low, high]."""
        low, high = self._like(x)
        return (x + 1.0) * 0.5 * (high - low) + low

    def _like(self, x):
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.low, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.high, dtype=x.dtype, device=x.device))
        return self.low, self.high

    def to_dict(self) -> dict:
        """JSON-ready bounds."""
        return {'low': self.low.tolist(), 'high': self.high.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> 'Normalizer':
        """Rebuild from to_dict output."""
        return cls(np.asarray(data['low']), np.asarray(data['high']))
