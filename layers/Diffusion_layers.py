"""1D U-Net denoiser conditioned on an iTransformer encoding.

The network knows nothing about diffusion: it maps a noisy horizon x (R·B, N, H), a time step t
and a condition computed from z (B, N, d_model) to a tensor shaped like x. Variates N are the
channels, the horizon H is the length.

Conditioning:
  * a global FiLM vector c = out(SiLU(W_z mean_N(z) + W_t t_emb)) modulates every ResBlock,
  * cross-attention from every horizon position (query) to the N variate tokens of z (keys),
  * optionally, extra input channels (the point forecast) concatenated to x.

Everything that depends on z (and the extra channels) alone is computed once per forecast window
by `UNet1D.encode_condition` and reused at every sampling step. One condition of B windows
serves R·B rows laid out window-major: rows b·R .. b·R + R − 1 are R trajectories (samples) of
window b. FiLM broadcasts over a window's R rows, and cross-attention folds them into the query
length, so the condition is never copied R times.

Layout: inside the U-Net, features are (R·B, C, 1, L) tensors in channels-last memory, i.e.
rows of (L, C) values. Convolutions over a few dozen channels run several times faster on this
layout than on (R·B, C, L) rows (oneDNN on CPUs, cuDNN for half precision), and a window's R
samples are then one (R·L, C) matrix for the cross-attention, without a copy. Group norm, FiLM
and SiLU are one per-(row, channel) scale and shift computed from per-channel sums.

Init: FiLM linears are zero (FiLM starts as the identity); final_conv keeps PyTorch's default
init so gradients reach the whole network from the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_count(channels: int, groups: int = 8) -> int:
    """Largest divisor of `channels` not above `groups` that also divides `groups` (gcd)."""
    return math.gcd(channels, groups)


def to_features(x: Tensor) -> Tensor:
    """(R·B, C, L) -> (R·B, C, 1, L) in channels-last memory, the U-Net's feature layout."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def as_rows(h: Tensor) -> Tensor:
    """Features (R·B, C, 1, L) -> their memory as (R·B, L, C), a view."""
    return h.permute(0, 2, 3, 1).squeeze(1)


def from_rows(rows: Tensor) -> Tensor:
    """(R·B, L, C) contiguous rows -> features (R·B, C, 1, L), a view."""
    return rows.unsqueeze(1).permute(0, 3, 1, 2)


class Conv1d(nn.Conv1d):
    """nn.Conv1d over U-Net features (R·B, C, 1, L) in channels-last memory, as a (1, k)
    convolution; the weights and the state dict are nn.Conv1d's."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.unsqueeze(2)  # (out, in, 1, k)
        pad = (0, self.padding[0])
        return F.conv2d(x, weight, self.bias, stride=(1, self.stride[0]), padding=pad)


def norm_film_act(
    h: Tensor, norm: nn.GroupNorm, c_film: tuple[Tensor, Tensor] | None = None, act: bool = True
) -> Tensor:
    """silu(GroupNorm(h)·(1 + γ) + β) on features (R·B, C, 1, L) -> the same layout.

    γ, β (B, C) serve window b's R rows (window-major). The group statistics come from
    per-channel sums and sums of squares (float32), then normalisation, affine and FiLM are one
    scale and shift per (row, channel): two reductions and one pass over the features.
    """
    RB, C, _, L = h.shape
    G = norm.num_groups
    rows = as_rows(h)  # (R·B, L, C)
    stats = rows.float()
    sums = torch.stack((stats.sum(1), stats.square().sum(1)))  # (2, R·B, C)
    mean, mean_sq = sums.view(2, RB, G, -1).sum(-1, keepdim=True).div(L * (C // G))
    rstd = torch.rsqrt((mean_sq - mean.square()).clamp_min(0) + norm.eps)  # (R·B, G, 1)
    scale = (rstd * norm.weight.view(G, -1)).view(RB, C)
    shift = norm.bias - (mean * rstd * norm.weight.view(G, -1)).view(RB, C)
    if c_film is not None:
        gamma, beta = c_film  # (B, C) each
        W = gamma.shape[0]
        scale = (scale.view(W, -1, C) * (1 + gamma[:, None])).view(RB, C)
        shift = (shift.view(W, -1, C) * (1 + gamma[:, None]) + beta[:, None]).view(RB, C)
    out = torch.addcmul(shift[:, None].to(rows.dtype), rows, scale[:, None].to(rows.dtype))
    return from_rows(F.silu(out, inplace=True) if act else out)


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding of a (B,) time step -> (B, dim)."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"SinusoidalPosEmb needs an even dim >= 4, got {dim}")
        self.dim = dim
        self.theta = theta

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        scale = math.log(self.theta) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
        args = t.float()[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class ConditionProjector(nn.Module):
    """c = out(SiLU(W_z mean_N(z) + W_t t_emb)); the z part is separable and cached."""

    def __init__(self, d_model: int, time_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.z_proj = nn.Linear(d_model, cond_dim)
        self.t_proj = nn.Linear(time_dim, cond_dim)
        self.out = nn.Linear(cond_dim, cond_dim)

    def encode(self, z: Tensor) -> Tensor:
        """z (B, N, d_model) -> z part (B, cond_dim)."""
        return self.z_proj(z.mean(dim=1))

    def forward(self, z_part: Tensor, t_emb: Tensor) -> Tensor:
        """z_part (B, cond_dim), t_emb (B or 1, time_dim) -> c (B, cond_dim)."""
        return self.out(F.silu(z_part + self.t_proj(t_emb)))


class FiLMLayer(nn.Module):
    """Scale-and-shift of normalised features: h·(1 + γ) + β, the identity at init."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """c (B, cond_dim) -> γ, β (B, C) each, for `norm_film_act`."""
        gamma, beta = self.proj(F.silu(c)).chunk(2, dim=1)
        return gamma, beta


class ResBlock1D(nn.Module):
    """Conv -> GroupNorm -> FiLM -> SiLU -> Conv -> GroupNorm -> SiLU, plus a residual."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv1 = Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(group_count(out_ch, groups), out_ch)
        self.film = FiLMLayer(cond_dim, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv1d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(out_ch, groups), out_ch)
        self.res_conv = Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x (R·B, in_ch, 1, L) features, c (B, cond_dim) -> (R·B, out_ch, 1, L)."""
        h = norm_film_act(self.conv1(x), self.norm1, self.film(c))
        h = norm_film_act(self.conv2(self.dropout(h)), self.norm2)
        return h.add_(self.res_conv(x))


@dataclass(frozen=True)
class AttentionKV:
    """What one cross-attention layer needs from z, computed once per window: the keys with
    the query projection and 1/sqrt(head_dim) folded in, and the values with the output
    projection (and its bias) folded in, (B, heads·N, C) each."""

    keys: Tensor
    values: Tensor


class VariateCrossAttention(nn.Module):
    """Horizon positions (queries) attend over the N variate tokens of z (keys/values).

    Per head h: softmax(q_h k_hᵀ / sqrt(d)) v_h with q = W_q x, and the output W_o [o_1 … o_H]
    + b. Since q_h k_hᵀ = x (W_q,hᵀ k_hᵀ) and W_o,h o_h = softmax(·) (v_h W_o,hᵀ), both
    projections fold into per-window keys and values once (`kv`), and each step costs two
    matrix products per window with inner sizes C and heads·N. A window's R samples are one
    (R·L, C) matrix of queries, so the keys and values serve them all without copies.
    """

    def __init__(self, channels: int, d_model: int, n_heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.norm = nn.GroupNorm(group_count(channels, groups), channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_kv = nn.Linear(d_model, 2 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)

    def kv(self, z: Tensor) -> AttentionKV:
        """z (B, N, d_model) -> folded keys and values (B, heads·N, C)."""
        B, N, _ = z.shape
        hs, hd = self.n_heads, self.head_dim
        C = hs * hd
        k, v = self.to_kv(z).view(B, N, 2, hs, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B,hs,N,hd)
        keys = torch.einsum("bhnd,hdc->bhnc", k, self.to_q.weight.view(hs, hd, C)) * hd**-0.5
        values = torch.einsum("bhnd,chd->bhnc", v, self.to_out.weight.view(C, hs, hd))
        # each head's weights sum to one, so bias / heads on every value adds the bias once
        values = values + self.to_out.bias / hs
        return AttentionKV(keys.reshape(B, hs * N, C), values.reshape(B, hs * N, C))

    def forward(self, h: Tensor, kv: AttentionKV) -> Tensor:
        """h (R·B, C, 1, L) features, kv of B windows -> h + attention output, same layout."""
        RB, C, _, L = h.shape
        B, K, _ = kv.keys.shape
        rows = as_rows(norm_film_act(h, self.norm, act=False)).reshape(B, -1, C)  # (B, R·L, C)
        scores = torch.bmm(kv.keys.to(rows.dtype), rows.transpose(1, 2))  # (B, hs·N, R·L)
        weights = scores.view(B, self.n_heads, -1, scores.shape[-1]).softmax(dim=2)  # over N
        weights = weights.view(B, K, -1).to(rows.dtype)
        out = torch.bmm(weights.transpose(1, 2), kv.values.to(rows.dtype))  # (B, R·L, C)
        return from_rows(out.view(RB, L, C).add_(as_rows(h)))


class DownBlock1D(nn.Module):
    """ResBlock (with FiLM) at in_ch, then a stride-2 conv to out_ch; returns (h, skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.res = ResBlock1D(in_ch, in_ch, cond_dim, groups, dropout)
        self.down = Conv1d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.res(x, c)  # (R·B, in_ch, 1, L)
        return self.down(skip), skip  # (R·B, out_ch, 1, L/2), (R·B, in_ch, 1, L)


class UpBlock1D(nn.Module):
    """Nearest ×2 upsample + conv to out_ch, concat skip, ResBlock (FiLM), cross-attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cond_dim: int,
        d_model: int,
        n_heads: int = 4,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.up = Conv1d(in_ch, out_ch, 3, padding=1)
        self.res = ResBlock1D(2 * out_ch, out_ch, cond_dim, groups, dropout)
        self.attn = VariateCrossAttention(out_ch, d_model, n_heads, groups)

    def forward(self, x: Tensor, skip: Tensor, c: Tensor, kv: AttentionKV) -> Tensor:
        h = self.up(
            F.interpolate(x, scale_factor=(1.0, 2.0), mode="nearest")
        )  # (R·B, out_ch, 1, 2L)
        h = self.res(torch.cat([h, skip], dim=1), c)  # (R·B, out_ch, 2L)
        return self.attn(h, kv)


@dataclass(frozen=True)
class UNetCondition:
    """Everything UNet1D needs from z and the extra channels, computed once per window.

    z_part: (B, cond_dim) the z half of the ConditionProjector.
    kv: one AttentionKV per cross-attention layer.
    first: (B, C0, 1, L) init_conv's bias plus its response to the extra input channels (the
        point forecast), which do not change from step to step.
    """

    z_part: Tensor
    kv: tuple[AttentionKV, ...]
    first: Tensor

    @property
    def windows(self) -> int:
        return self.z_part.shape[0]


class UNet1D(nn.Module):
    """1D U-Net over the horizon with variates as channels; see the module docstring."""

    def __init__(
        self,
        n_vars: int,
        d_model: int,
        cond_dim: int = 256,
        channels: tuple[int, ...] = (64, 128, 256, 512),
        n_heads: int = 4,
        dropout: float = 0.0,
        extra_in_channels: int = 0,
        time_dim: int | None = None,
        groups: int = 8,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("UNet1D needs at least one channel width")
        self.n_vars = n_vars
        self.extra_in_channels = extra_in_channels
        self.channels = tuple(channels)
        self.multiple = 2 ** (len(channels) - 1)
        time_dim = time_dim or 4 * channels[0]

        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(channels[0]),
            nn.Linear(channels[0], time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )
        self.cond_proj = ConditionProjector(d_model, time_dim, cond_dim)

        self.init_conv = Conv1d(n_vars + extra_in_channels, channels[0], 7, padding=3)
        pairs = list(zip(channels[:-1], channels[1:]))
        self.downs = nn.ModuleList([DownBlock1D(i, o, cond_dim, groups, dropout) for i, o in pairs])
        self.mid_res1 = ResBlock1D(channels[-1], channels[-1], cond_dim, groups, dropout)
        self.mid_attn = VariateCrossAttention(channels[-1], d_model, n_heads, groups)
        self.mid_res2 = ResBlock1D(channels[-1], channels[-1], cond_dim, groups, dropout)
        self.ups = nn.ModuleList(
            [UpBlock1D(o, i, cond_dim, d_model, n_heads, groups, dropout) for i, o in pairs[::-1]]
        )
        self.final_norm = nn.GroupNorm(group_count(channels[0], groups), channels[0])
        self.final_conv = Conv1d(channels[0], n_vars, 1)

    def _pad(self, x: Tensor) -> Tensor:
        """Replicate-pad the length to a multiple of 2^(levels-1)."""
        pad = -x.shape[-1] % self.multiple
        return F.pad(x, (0, pad), mode="replicate") if pad else x

    def encode_condition(self, z: Tensor, extra: Tensor | None = None) -> UNetCondition:
        """z (B, N, d_model), extra (B, E, H) when extra_in_channels > 0 -> UNetCondition
        holding every quantity that depends on them alone (not on the state or the step)."""
        attn_layers = [self.mid_attn] + [up.attn for up in self.ups]
        kv = tuple(attn.kv(z) for attn in attn_layers)
        weight, bias = self.init_conv.weight, self.init_conv.bias  # (C0, N + E, 7), (C0,)
        if self.extra_in_channels:
            if extra is None or extra.shape[1] != self.extra_in_channels:
                raise ValueError(f"the denoiser needs {self.extra_in_channels} extra channels")
            w = weight[:, self.n_vars :].unsqueeze(2)
            first = F.conv2d(to_features(self._pad(extra)), w, bias, padding=(0, 3))
        else:
            if extra is not None:
                raise ValueError("extra channels given to a denoiser built without them")
            first = bias.view(1, -1, 1, 1).expand(len(z), -1, 1, 1)
        return UNetCondition(z_part=self.cond_proj.encode(z), kv=kv, first=first)

    def forward(self, x: Tensor, t: Tensor | float, cond: UNetCondition) -> Tensor:
        """x (R·B, N, H) window-major, t a scalar or (B,) per window, cond of B windows
        -> (R·B, N, H)."""
        H = x.shape[-1]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1)  # (1,) or (B,)
        c = self.cond_proj(cond.z_part, self.time_mlp(t))  # (B, cond_dim)
        w = self.init_conv.weight[:, : self.n_vars].unsqueeze(2)
        h = F.conv2d(to_features(self._pad(x)), w, padding=(0, 3))  # (R·B, C0, 1, L)
        B = cond.windows
        h.view(B, -1, *h.shape[1:]).add_(cond.first.to(h.dtype).unsqueeze(1))  # + bias, extra
        skips = []
        for down in self.downs:
            h, skip = down(h, c)
            skips.append(skip)
        mid_kv, *up_kvs = cond.kv
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, c), mid_kv), c)
        for up, kv in zip(self.ups, up_kvs):
            h = up(h, skips.pop(), c, kv)
        out = self.final_conv(norm_film_act(h, self.final_norm))  # (R·B, N, 1, L)
        return out.squeeze(2)[..., :H]
