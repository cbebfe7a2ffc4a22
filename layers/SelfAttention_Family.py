"""Full attention on ``F.scaled_dot_product_attention`` and TSLib's ``AttentionLayer``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FullAttention(nn.Module):
    """Scaled dot-product attention. q (B, L, H, E), k (B, S, H, E), v (B, S, H, D)."""

    def __init__(
        self,
        mask_flag: bool = True,
        factor: int = 5,
        scale: float | None = None,
        attention_dropout: float = 0.1,
        output_attention: bool = False,
    ):
        super().__init__()
        self.mask_flag, self.scale = mask_flag, scale
        self.output_attention = output_attention
        self.dropout_p = attention_dropout

    def forward(self, queries, keys, values, attn_mask=None, tau=None, delta=None):
        q, k, v = (t.transpose(1, 2) for t in (queries, keys, values))  # (B, H, L|S, E)
        dropout = self.dropout_p if self.training else 0.0
        if self.output_attention:
            scale = self.scale or 1.0 / math.sqrt(q.shape[-1])
            scores = torch.softmax(scale * q @ k.transpose(-2, -1), dim=-1)  # (B, H, L, S)
            out = F.dropout(scores, dropout, self.training) @ v
            return out.transpose(1, 2).contiguous(), scores
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=self.mask_flag, scale=self.scale
        )  # (B, H, L, D)
        return out.transpose(1, 2).contiguous(), None  # (B, L, H, D)


class AttentionLayer(nn.Module):
    """Multi-head projections around an inner attention. x (B, L, d_model) → (B, L, d_model)."""

    def __init__(self, attention, d_model: int, n_heads: int, d_keys=None, d_values=None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask=None, tau=None, delta=None):
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        q = self.query_projection(queries).view(B, L, H, -1)  # (B, L, H, E)
        k = self.key_projection(keys).view(B, S, H, -1)  # (B, S, H, E)
        v = self.value_projection(values).view(B, S, H, -1)  # (B, S, H, D)
        out, attn = self.inner_attention(q, k, v, attn_mask, tau=tau, delta=delta)
        return self.out_projection(out.view(B, L, -1)), attn  # (B, L, d_model)
