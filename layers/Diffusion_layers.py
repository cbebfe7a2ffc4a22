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


def per_window(h: Tensor, windows: int) -> Tensor:
    """(R·B, C, L) window-major rows -> (B, R, C, L), a view."""
    return h.view(windows, -1, *h.shape[1:])


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

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h (R·B, C, L) normalised, c (B, cond_dim) -> like h; row b of c serves window b's
        R rows."""
        gamma, beta = self.proj(F.silu(c)).chunk(2, dim=1)  # (B, C) each
        out = per_window(h, len(c)) * (1 + gamma[:, None, :, None]) + beta[:, None, :, None]
        return out.view(h.shape)


class ResBlock1D(nn.Module):
    """Conv -> GroupNorm -> FiLM -> SiLU -> Conv -> GroupNorm -> SiLU, plus a residual."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(group_count(out_ch, groups), out_ch)
        self.film = FiLMLayer(cond_dim, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(out_ch, groups), out_ch)
        self.res_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = F.silu(self.film(self.norm1(self.conv1(x)), c))  # (R·B, out_ch, L)
        h = F.silu(self.norm2(self.conv2(self.dropout(h))))
        return h + self.res_conv(x)


@dataclass(frozen=True)
class AttentionKV:
    """Keys and values of one cross-attention layer, (B, heads, N, head_dim) each."""

    k: Tensor
    v: Tensor


class VariateCrossAttention(nn.Module):
    """Horizon positions (queries) attend over the N variate tokens of z (keys/values).

    `kv(z)` depends on z only. `forward(h, kv)` takes h with R·B window-major rows and k/v of
    B windows: each window's R rows are folded into one query sequence of length R·L, so that
    k/v serve all of them without copies.
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
        """z (B, N, d_model) -> AttentionKV with k, v (B, heads, N, head_dim)."""
        B, N, _ = z.shape
        kv = self.to_kv(z).view(B, N, 2, self.n_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, hs, N, hd)
        return AttentionKV(k, v)

    def forward(self, h: Tensor, kv: AttentionKV) -> Tensor:
        """h (R·B, C, L), kv of B windows -> h + attention output, (R·B, C, L)."""
        RB, C, L = h.shape
        B = kv.k.shape[0]
        rows = self.norm(h).transpose(1, 2).reshape(B, -1, C)  # (B, R·L, C)
        q = self.to_q(rows).view(B, -1, self.n_heads, self.head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, kv.k, kv.v)  # (B, hs, R·L, hd)
        out = self.to_out(o.transpose(1, 2).reshape(RB, L, C))  # (R·B, L, C)
        return h + out.transpose(1, 2)


class DownBlock1D(nn.Module):
    """ResBlock (with FiLM) at in_ch, then a stride-2 conv to out_ch; returns (h, skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.res = ResBlock1D(in_ch, in_ch, cond_dim, groups, dropout)
        self.down = nn.Conv1d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.res(x, c)  # (R·B, in_ch, L)
        return self.down(skip), skip  # (R·B, out_ch, L/2), (R·B, in_ch, L)


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
        self.up = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.res = ResBlock1D(2 * out_ch, out_ch, cond_dim, groups, dropout)
        self.attn = VariateCrossAttention(out_ch, d_model, n_heads, groups)

    def forward(self, x: Tensor, skip: Tensor, c: Tensor, kv: AttentionKV) -> Tensor:
        h = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (R·B, out_ch, 2L)
        h = self.res(torch.cat([h, skip], dim=1), c)  # (R·B, out_ch, 2L)
        return self.attn(h, kv)


@dataclass(frozen=True)
class UNetCondition:
    """Everything UNet1D needs from z and the extra channels, computed once per window.

    z_part: (B, cond_dim) the z half of the ConditionProjector.
    kv: one AttentionKV per cross-attention layer.
    first: (B, C0, L) init_conv's bias plus its response to the extra input channels (the
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

        self.init_conv = nn.Conv1d(n_vars + extra_in_channels, channels[0], 7, padding=3)
        pairs = list(zip(channels[:-1], channels[1:]))
        self.downs = nn.ModuleList([DownBlock1D(i, o, cond_dim, groups, dropout) for i, o in pairs])
        self.mid_res1 = ResBlock1D(channels[-1], channels[-1], cond_dim, groups, dropout)
        self.mid_attn = VariateCrossAttention(channels[-1], d_model, n_heads, groups)
        self.mid_res2 = ResBlock1D(channels[-1], channels[-1], cond_dim, groups, dropout)
        self.ups = nn.ModuleList(
            [UpBlock1D(o, i, cond_dim, d_model, n_heads, groups, dropout) for i, o in pairs[::-1]]
        )
        self.final_norm = nn.GroupNorm(group_count(channels[0], groups), channels[0])
        self.final_conv = nn.Conv1d(channels[0], n_vars, 1)

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
            first = F.conv1d(self._pad(extra), weight[:, self.n_vars :], bias, padding=3)
        else:
            if extra is not None:
                raise ValueError("extra channels given to a denoiser built without them")
            first = bias.view(1, -1, 1).expand(len(z), -1, 1)
        return UNetCondition(z_part=self.cond_proj.encode(z), kv=kv, first=first)

    def forward(self, x: Tensor, t: Tensor | float, cond: UNetCondition) -> Tensor:
        """x (R·B, N, H) window-major, t a scalar or (B,) per window, cond of B windows
        -> (R·B, N, H)."""
        H = x.shape[-1]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1)  # (1,) or (B,)
        c = self.cond_proj(cond.z_part, self.time_mlp(t))  # (B, cond_dim)
        h = F.conv1d(self._pad(x), self.init_conv.weight[:, : self.n_vars], padding=3)
        h = (per_window(h, cond.windows) + cond.first[:, None]).view(h.shape)  # (R·B, C0, L)
        skips = []
        for down in self.downs:
            h, skip = down(h, c)
            skips.append(skip)
        mid_kv, *up_kvs = cond.kv
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, c), mid_kv), c)
        for up, kv in zip(self.ups, up_kvs):
            h = up(h, skips.pop(), c, kv)
        out = self.final_conv(F.silu(self.final_norm(h)))  # (R·B, N, L)
        return out[..., :H]
