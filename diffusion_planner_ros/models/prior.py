"""Autoregressive transformer prior over [state, condition] tokens (paper section 4.2).

One token per timestep: separate linear embeddings of the state and of the condition, summed with
a learned position embedding and layer-normalised. Two heads predict the next state and the next
condition. Training uses a causal mask, so the head at position t sees tokens 0..t only (the
official code omits the mask, which lets a position see its own target). Rollout keeps a KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_planner_ros.config import PriorConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention that can extend a key/value cache."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, past: tuple | None = None):
        """Attend over the cached keys plus x's own; returns output and the new cache entry."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (B, T, C) -> (B, n_head, T, C / n_head)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif length == 1:
            # One new token may see every cached one.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            offset = k.shape[2] - length
            mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=x.device)
            mask = mask.tril(diagonal=offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(batch, length, width)  # (B, T, C)
        return self.resid_dropout(self.proj(y)), (k, v)

    def step(self, x: torch.Tensor, past: tuple) -> tuple:
        """Attend from one new token per sequence, x (B, C), over the cache; rollout only.

        The same arithmetic as forward with a length-1 x, written on 2-D tensors: an exported
        graph then needs no transposes and no reshapes around its matrix products, which is most
        of the work at this size.
        """
        batch, width = x.shape
        head_dim = width // self.n_head
        q, k, v = self.qkv(x).split(width, dim=1)
        # (B, C) -> (B, n_head, 1, C / n_head): a single token needs no transpose
        q, k, v = (t.view(batch, self.n_head, 1, head_dim) for t in (q, k, v))
        k = torch.cat([past[0], k], dim=2)  # (B, n_head, T + 1, C / n_head)
        v = torch.cat([past[1], v], dim=2)
        weights = torch.softmax(q @ k.transpose(2, 3) * head_dim ** -0.5, dim=-1)
        y = (weights @ v).view(batch, width)  # (B, n_head, 1, C / n_head) -> (B, C)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.ReLU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, past: tuple | None = None):
        """Apply the block to x (B, T, C), or to one new token (B, C) with a cache.

        Returns the output and the layer's cache entry.
        """
        attend = self.attn.step if x.dim() == 2 else self.attn
        attended, present = attend(self.ln_1(x), past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), present


class TrajectoryPrior(nn.Module):
    """GPT over [state, condition] tokens predicting (s_t+1, condition_t+1)."""

    def __init__(self, config: PriorConfig, obs_dim: int, cond_dim: int, block_size: int):
        super().__init__()
        self.config = config
        self.obs_dim, self.cond_dim, self.block_size = obs_dim, cond_dim, block_size
        self.embed_state = nn.Linear(obs_dim, config.n_embd)
        self.embed_condition = nn.Linear(cond_dim, config.n_embd)
        self.embed_position = nn.Parameter(torch.zeros(1, block_size, config.n_embd))
        self.embed_ln = nn.LayerNorm(config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head_state = nn.Linear(config.n_embd, obs_dim)
        self.head_condition = nn.Linear(config.n_embd, cond_dim)
        self.apply(self._init_weights)
        nn.init.normal_(self.embed_position, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, states: torch.Tensor, conditions: torch.Tensor, past: KVCache | None = None,
                start: int = 0):
        """Predict next states and conditions for tokens at positions start..start+T-1.

        states (B, T, obs_dim), conditions (B, T, cond_dim). Returns (next_states, next_conditions,
        cache) with the first two shaped like the inputs.
        """
        length = states.shape[1]
        if start + length > self.block_size:
            raise ValueError(f'{start + length} tokens exceed the prior block size '
                             f'{self.block_size} (history + horizon)')
        x = (self.embed_state(states) + self.embed_condition(conditions)
             + self.embed_position[:, start:start + length])
        return self._predict(self.drop(self.embed_ln(x)), past)

    def _predict(self, x: torch.Tensor, past: KVCache | None):
        """Embedded tokens (B, T, n_embd) or (B, n_embd) -> next states, conditions, cache."""
        cache = []
        for index, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[index])
            cache.append(present)
        x = self.ln_f(x)
        return self.head_state(x), self.head_condition(x), cache

    def step(self, state: torch.Tensor, condition_embedding: torch.Tensor, past: KVCache,
             position: int):
        """Predict from one new token per sequence at ``position``; rollout only.

        state (B, obs_dim); condition_embedding (B, n_embd) is embed_condition of the token's
        condition, passed in so that a held goal is embedded once per rollout. Returns
        (next_state (B, obs_dim), next_condition (B, cond_dim), cache).
        """
        if position >= self.block_size:
            raise ValueError(f'{position + 1} tokens exceed the prior block size '
                             f'{self.block_size} (history + horizon)')
        x = self.embed_state(state) + condition_embedding + self.embed_position[0, position]
        return self._predict(self.embed_ln(x), past)

    @torch.no_grad()
    def rollout(self, states: torch.Tensor, conditions: torch.Tensor, steps: int,
                hold_condition: bool, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressively generate ``steps`` states after the history (paper Eq. 5).

        states (B, h, obs_dim) and conditions (B, h, cond_dim) are the history. With
        hold_condition the last given condition is fed again at each step (a goal does not
        change); otherwise the predicted condition is fed (returns-to-go). Returns the generated
        states (B, steps, obs_dim) and conditions (B, steps, cond_dim).
        """
        new_states, new_conditions = [], []
        if use_cache:
            next_s, next_c, cache = self(states, conditions)
            s, c = next_s[:, -1], next_c[:, -1]  # (B, obs_dim), (B, cond_dim)
            held = conditions[:, -1]
            held_embedding = self.embed_condition(held) if hold_condition else None
            for step in range(steps):
                c = held if hold_condition else c
                new_states.append(s)
                new_conditions.append(c)
                if step == steps - 1:
                    break
                embedding = held_embedding if hold_condition else self.embed_condition(c)
                s, c, cache = self.step(s, embedding, cache, states.shape[1] + step)
            # steps x (B, dim) -> (B, steps, dim)
            return torch.stack(new_states, dim=1), torch.stack(new_conditions, dim=1)
        seq_s, seq_c = states, conditions
        for _ in range(steps):
            next_s, next_c, _ = self(seq_s, seq_c)
            s = next_s[:, -1:]
            c = seq_c[:, -1:] if hold_condition else next_c[:, -1:]
            new_states.append(s)
            new_conditions.append(c)
            seq_s, seq_c = torch.cat([seq_s, s], 1), torch.cat([seq_c, c], 1)
        return torch.cat(new_states, dim=1), torch.cat(new_conditions, dim=1)
