"""iTransformer (Liu et al., ICLR 2024), as in Time-Series-Library.

Variates are tokens: each variate's lookback is embedded into one d_model vector, time features
become extra tokens, a post-norm encoder attends across tokens, and a linear head maps every
variate token to the horizon. Instance normalisation (RevIN without affine) wraps it.
Conventions: TSLib tensors (B, L, N); encoder tokens (B, N, d_model).
"""

from __future__ import annotations

import torch
from torch import nn

from layers.Embed import DataEmbedding_inverted
from layers.SelfAttention_Family import AttentionLayer, FullAttention
from layers.Transformer_EncDec import Encoder, EncoderLayer


class Normalizer:
    """Per-window instance statistics; ``means`` and ``stdev`` are (B, 1, N)."""

    def __init__(self, x_enc: torch.Tensor):
        self.means = x_enc.mean(1, keepdim=True).detach()
        centered = x_enc - self.means
        self.stdev = torch.sqrt(torch.var(centered, dim=1, keepdim=True, unbiased=False) + 1e-5)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.means) / self.stdev

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.stdev + self.means


class Model(nn.Module):
    def __init__(self, configs):
        super().__init__()
        self.seq_len = configs.seq_len
        self.pred_len = configs.pred_len
        self.enc_embedding = DataEmbedding_inverted(
            configs.seq_len, configs.d_model, configs.embed, configs.freq, configs.dropout
        )
        self.encoder = Encoder(
            [
                EncoderLayer(
                    AttentionLayer(
                        FullAttention(False, configs.factor, attention_dropout=configs.dropout),
                        configs.d_model,
                        configs.n_heads,
                    ),
                    configs.d_model,
                    configs.d_ff,
                    dropout=configs.dropout,
                    activation=configs.activation,
                )
                for _ in range(configs.e_layers)
            ],
            norm_layer=nn.LayerNorm(configs.d_model),
        )
        self.projection = nn.Linear(configs.d_model, configs.pred_len, bias=True)

    def encode(self, x_norm: torch.Tensor, x_mark_enc: torch.Tensor | None) -> torch.Tensor:
        """Normalised lookback (B, L, N) → variate tokens z (B, N, d_model), time tokens dropped."""
        n_vars = x_norm.shape[2]
        tokens = self.enc_embedding(x_norm, x_mark_enc)  # (B, N + M, d_model)
        tokens, _ = self.encoder(tokens, attn_mask=None)
        return tokens[:, :n_vars, :]  # (B, N, d_model)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Variate tokens (B, N, d_model) → normalised forecast (B, H, N)."""
        return self.projection(z).permute(0, 2, 1)

    def backbone_forward(self, x_enc: torch.Tensor, x_mark_enc: torch.Tensor | None):
        """→ (y_det (B, H, N) in input units, z (B, N, d_model), Normalizer)."""
        norm = Normalizer(x_enc)
        z = self.encode(norm.normalize(x_enc), x_mark_enc)
        return norm.denormalize(self.head(z)), z, norm

    def forecast(self, x_enc, x_mark_enc, x_dec=None, x_mark_dec=None) -> torch.Tensor:
        y_det, _, _ = self.backbone_forward(x_enc, x_mark_enc)
        return y_det

    def forward(self, x_enc, x_mark_enc=None, x_dec=None, x_mark_dec=None):
        return self.forecast(x_enc, x_mark_enc)[:, -self.pred_len :, :]  # (B, H, N)
