"""Embeddings. Only the inverted embedding of iTransformer is needed here."""

from __future__ import annotations

import torch
from torch import nn


class DataEmbedding_inverted(nn.Module):
    """Each variate's whole lookback (and each time-feature's) becomes one token.

    x (B, L, N), x_mark (B, L, M) or None → tokens (B, N + M, d_model).
    """

    def __init__(self, c_in: int, d_model: int, embed_type="fixed", freq="h", dropout=0.1):
        super().__init__()
        self.value_embedding = nn.Linear(c_in, d_model)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None) -> torch.Tensor:
        x = x.permute(0, 2, 1)  # (B, N, L)
        if x_mark is not None:
            x = torch.cat([x, x_mark.permute(0, 2, 1)], dim=1)  # (B, N + M, L)
        return self.dropout(self.value_embedding(x))  # (B, N + M, d_model)
