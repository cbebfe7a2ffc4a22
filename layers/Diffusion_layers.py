"""1D U-Net denoiser conditioned on an iTransformer encoding.

The network knows nothing about diffusion: it maps a noisy horizon x (B, N, H), a time step t
and a condition z (B, N, d_model) to a tensor shaped like x. Variates N are the channels, the
horizon H is the length.

Conditioning:
  * global FiLM vector c = MLP(SiLU(W_z mean_N(z) + W_t t_emb)) modulates every ResBlock,
  * cross-attention from every horizon position (query) to the N variate tokens of z (keys).

Everything that depends on z alone is computed once by `UNet1D.encode_condition(z)` and reused
across sampling steps. `repeat_condition(cond, S)` makes it serve S*B trajectories laid out
window-major (rows b*S .. b*S + S-1 are the S samples of window b) without copying k/v: the
attention folds each window's S samples into its query length instead.

Init: FiLM linears are zero (FiLM starts as the identity); final_conv keeps PyTorch's default
init so gradients reach the whole network from the first step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers import cpu_kernels


def group_count(channels: int, groups: int = 8) -> int:
    """Largest divisor of `channels` not above `groups` that also divides `groups` (gcd)."""
    return math.gcd(channels, groups)


class Conv1d(nn.Conv1d):
    """nn.Conv1d that also takes (B, C, 1, L) features in channels-last memory (B, L, C).

    The U-Net keeps its features that way: oneDNN's convolutions over few channels run several
    times faster on channels-last data than on (B, C, L) rows, and cuDNN prefers it for bf16.
    The weights and the state dict are those of nn.Conv1d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return super().forward(x)
        return F.conv2d(
            x,
            self.weight.unsqueeze(2),
            self.bias,
            stride=(1, self.stride[0]),
            padding=(0, self.padding[0]),
        )


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm with a fast CPU inference path and the FiLM and SiLU that follow it.

    ``norm_act(x, gamma, beta, act, residual)`` is ``silu(norm(x) * (1 + gamma) + beta) +
    residual`` (FiLM, SiLU and residual optional). On float32 or bfloat16 U-Net features in a
    CPU inference pass it runs the fused C kernel of `layers.cpu_kernels` (two passes over the
    features, float32 arithmetic, output in x's dtype) where that is compiled. Otherwise it
    computes the group statistics from per-channel sums and sums of squares, then applies
    normalisation, affine and FiLM as one per-(row, channel) scale and shift: two cheap
    reductions and one or two passes over the features. oneDNN's channels-last group norm
    with a few channels per group took 5-10 times as long as such a pass (1.5 ms against
    0.1 ms for 640 x 16 x 96 features).
    Small inputs (a batch of a few dozen windows) keep torch's kernel there, which is faster
    than ~25 small tensor operations.

    Where the kernel does not apply, half-precision CPU features are normalised in float32:
    CUDA autocast already runs group_norm in float32; CPU autocast does not, and oneDNN's
    bfloat16 kernel for channels-last features is several times slower than the float32 one.
    """

    # below this many elements the fused path's ~25 small tensor ops cost more than they save
    fast_min_numel = 1 << 16

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)

    def norm_act(
        self,
        x: Tensor,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        act: bool = False,
        residual: Tensor | None = None,
    ) -> Tensor:
        """x (R*B, C, ...) -> silu?(norm(x) * (1 + gamma) + beta) + residual?; gamma, beta
        (B, C) or None, residual like x or None.

        gamma and beta may have fewer rows than x: row b serves x's rows b*R .. b*R + R-1
        (window-major, as the U-Net lays out a window's samples)."""
        if self._cpu_inference_features(x):
            if x.dtype in (torch.float32, torch.bfloat16):  # the fused C kernel, if compiled
                out = cpu_kernels.group_norm_act(
                    x, self.num_groups, self.weight, self.bias, self.eps, gamma, beta, act,
                    residual,
                )  # fmt: skip
                if out is not None:
                    return out
            if x.numel() >= self.fast_min_numel:
                out = self._fused_features(x, gamma, beta, act)
                return out if residual is None else out.add_(residual)
        h = self(x)
        if gamma is not None:
            h = film(h, gamma, beta)
        h = F.silu(h) if act else h
        return h if residual is None else h + residual

    def _cpu_inference_features(self, x: Tensor) -> bool:
        """U-Net features (B, C, 1, L) in channels-last memory, in a CPU inference pass."""
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.shape[2] == 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and self.affine
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        )

    def _fused_features(
        self, x: Tensor, gamma: Tensor | None, beta: Tensor | None, act: bool
    ) -> Tensor:
        """U-Net features (B, C, 1, L) in channels-last memory -> the same, float32 or x's dtype.

        The variance is E[x^2] - E[x]^2 with float32 sums over each group's C/G * L values,
        accurate to ~1e-6 relative while |mean| / std stays below ~100 (conv outputs of
        normalised inputs are far from that).
        """
        B, C, _, L = x.shape
        G = self.num_groups
        rows = x.permute(0, 2, 3, 1).view(B, L, C)  # the features' memory, (B, L, C)
        if rows.dtype in (torch.bfloat16, torch.float16):
            rows = rows.float()
        sums = torch.stack((rows.sum(1), rows.square().sum(1)))  # (2, B, C)
        sums = sums.view(2, B, G, -1).sum(-1, keepdim=True).mul_(1 / (L * (C // G)))
        mean, mean_sq = sums  # (B, G, 1) each
        rstd = torch.addcmul(mean_sq, mean, mean, value=-1).clamp_min_(0).add_(self.eps).rsqrt_()
        scale = rstd * self.weight.view(G, -1)  # (B, G, C/G)
        shift = torch.addcmul(self.bias.view(G, -1), mean, scale, value=-1).view(B, C)
        scale = scale.view(B, C)
        if gamma is not None:  # per window: (W, C) for B = W*R rows
            W = gamma.shape[0]
            gamma = (1 + gamma).unsqueeze(1)  # (W, 1, C)
            scale = scale.view(W, -1, C).mul_(gamma).view(B, C)
            shift = torch.addcmul(beta.unsqueeze(1), shift.view(W, -1, C), gamma).view(B, C)
        out = torch.addcmul(shift.unsqueeze(1), rows, scale.unsqueeze(1))  # (B, L, C)
        if act:
            out = F.silu(out, inplace=True)
        return out.view(B, 1, L, C).permute(0, 3, 1, 2)  # (B, C, 1, L) channels-last


def float32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off where it is on (operations in float32 again), else nothing."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def film(h: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """h * (1 + gamma) + beta in one pass over h (R*B, C, ...), gamma and beta (B, C): row b
    of gamma and beta serves h's rows b*R .. b*R + R-1 (window-major)."""
    W, C = gamma.shape
    ones = [1] * (h.dim() - 2)
    rows = h.view(W, -1, *h.shape[1:])  # (B, R, C, ...), a view whatever h's memory format
    out = torch.addcmul(beta.view(W, 1, C, *ones), rows, 1 + gamma.view(W, 1, C, *ones))
    return out.view(h.shape)


def to_features(x: Tensor) -> Tensor:
    """(B, C, L) -> (B, C, 1, L) in channels-last memory, the U-Net's feature layout."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding of a (B,) time step -> (B, dim)."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        assert dim % 2 == 0 and dim >= 4, "SinusoidalPosEmb needs an even dim >= 4"
        self.dim = dim
        self.theta = theta

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        scale = math.log(self.theta) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
        args = t.float()[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class ConditionProjector(nn.Module):
    """c = out(SiLU(W_z mean_N(z) + W_t t_emb)); the z part is separable and cacheable."""

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
    """Scale-and-shift of normalised features: h * (1 + gamma) + beta, identity at init."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def scale_shift(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """c (B, cond_dim) -> gamma, beta (B, C) each, in float32 also under autocast: a few
        rows per step, where a bfloat16 matmul saves nothing and costs casts and precision."""
        with float32_region(c.device.type):
            return self.proj(F.silu(c.float())).chunk(2, dim=1)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h (R*B, C, ...) already normalised, c (B, cond_dim) -> like h (see `film`)."""
        return film(h, *self.scale_shift(c))


class ResBlock1D(nn.Module):
    """Conv -> GroupNorm -> FiLM -> SiLU -> Conv -> GroupNorm -> SiLU, plus a residual."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv1 = Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm1 = GroupNorm(group_count(out_ch, groups), out_ch)
        self.film = FiLMLayer(cond_dim, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv1d(out_ch, out_ch, 3, padding=1)
        self.norm2 = GroupNorm(group_count(out_ch, groups), out_ch)
        self.res_conv = Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gamma, beta = self.film.scale_shift(c)  # (B, out_ch) each
        h = self.norm1.norm_act(self.conv1(x), gamma, beta, act=True)  # (B, out_ch, L)
        h = self.conv2(self.dropout(h))  # (B, out_ch, L)
        return self.norm2.norm_act(h, act=True, residual=self.res_conv(x))


class AttentionKV(NamedTuple):
    """What one cross-attention layer needs from z, computed once per window.

    k, v: (B, heads, N, head_dim), the textbook keys and values.
    keys: (B, heads*N, C), the keys with the query projection and 1/sqrt(head_dim) folded in;
    values: (B, heads*N, C), the values with the output projection (and its bias) folded in.
    The folded pair is None where it would be larger than the textbook path (many variates).
    """

    k: Tensor
    v: Tensor
    keys: Tensor | None
    values: Tensor | None


class VariateCrossAttention(nn.Module):
    """Horizon positions (queries) attend over the N variate tokens of z (keys/values).

    `kv(z)` depends on z only. `forward(h, kv)` accepts k/v with batch B while h has batch
    S*B (window-major, rows b*S .. b*S + S-1 belong to window b).

    Two exact evaluations of the same function. Both fold a window's S samples into one query
    sequence of length S*L, so that k/v are never copied and each window is one matrix
    product. The textbook one projects every position to a query, attends and projects back.
    With few variates (heads*N small next to the channels and the length) the query and output
    projections are folded into the keys and values once per window: scores = keys @ norm(h)
    and out = softmax(scores)^T @ values, two matmuls per window with no copies of the
    channels-last features, several times faster on a CPU.
    """

    def __init__(self, channels: int, d_model: int, n_heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        assert channels % n_heads == 0, "channels must be divisible by n_heads"
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.norm = GroupNorm(group_count(channels, groups), channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_kv = nn.Linear(d_model, 2 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)

    def kv(self, z: Tensor) -> AttentionKV:
        """z (B, N, d_model) -> AttentionKV (see there)."""
        B, N, _ = z.shape
        hs, hd = self.n_heads, self.head_dim
        C = hs * hd
        kv = self.to_kv(z).view(B, N, 2, hs, hd)  # (B, N, 2, hs, hd)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, hs, N, hd)
        if hs * N > 2 * C:  # folding would cost more than it saves
            return AttentionKV(k, v, None, None)
        w_q = self.to_q.weight.view(hs, hd, C)  # query of head h = w_q[h] @ x
        keys = torch.einsum("bhnd,hdc->bhnc", k, w_q).reshape(B, hs * N, C) * hd**-0.5
        w_o = self.to_out.weight.view(C, hs, hd)  # out = sum_h w_o[:, h] @ o_h + bias
        values = torch.einsum("bhnd,chd->bhnc", v, w_o).reshape(B, hs * N, C)
        # each head's attention weights sum to one, so bias / heads on every value adds the bias
        values = values + self.to_out.bias / hs
        return AttentionKV(k, v, keys, values)

    def forward(self, h: Tensor, kv: AttentionKV | tuple[Tensor, Tensor]) -> Tensor:
        """h (R*B, C, L) or U-Net features (R*B, C, 1, L), kv from `kv(z)` with batch B
        -> like h."""
        k, v = kv[0], kv[1]
        features = self.norm.norm_act(h)
        hn = features.squeeze(2) if h.dim() == 4 else features  # (R*B, C, L)
        RB, C, L = hn.shape
        B, _, N, _ = k.shape
        assert RB % B == 0, f"feature batch {RB} is not a multiple of condition batch {B}"
        R = RB // B
        if isinstance(kv, AttentionKV) and kv.keys is not None and self.n_heads * N <= 2 * L:
            fused = h.dim() == 4 and h.is_contiguous(memory_format=torch.channels_last)
            if fused and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
                # one C kernel: scores, softmax and the second matmul, tile by tile
                out = cpu_kernels.cross_attention_add(h, features, kv.keys, kv.values, self.n_heads)
                if out is not None:
                    return out
            attn = self._folded_weights(hn, kv.keys, R)  # (B, K, R*L)
            if fused and attn.dtype == h.dtype == kv.values.dtype == torch.float32:
                # h + attn^T @ values as one matmul that starts from h: a pass fewer
                rows = h.permute(0, 2, 3, 1).reshape(B, R * L, C)  # a view of h's memory
                out = torch.baddbmm(rows, attn.transpose(1, 2), kv.values)  # (B, R*L, C)
                return out.view(RB, 1, L, C).permute(0, 3, 1, 2)  # (R*B, C, 1, L)
            attn = attn.to(kv.values.dtype)  # softmax may run in float32 (autocast)
            out = torch.bmm(attn.transpose(1, 2), kv.values).view(RB, L, C)
        else:
            q = self.to_q(hn.transpose(1, 2))  # (R*B, L, C)
            q = q.view(B, R * L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, hs, R*L, hd)
            o = F.scaled_dot_product_attention(q, k, v)  # (B, hs, R*L, hd)
            o = o.transpose(1, 2).reshape(RB, L, C)  # (R*B, L, C)
            out = self.to_out(o)  # (R*B, L, C)
        out = out.transpose(1, 2)  # (R*B, C, L) with channels-last strides
        return h + (out.unsqueeze(2) if h.dim() == 4 else out)

    def _folded_weights(self, hn: Tensor, keys: Tensor, R: int) -> Tensor:
        """hn (R*B, C, L) normalised, keys (B, K, C) -> attention weights (B, K, R*L), each
        head's softmax over the variates."""
        RB, C, L = hn.shape
        B, K, _ = keys.shape
        rows = hn.transpose(1, 2).reshape(B, R * L, C)  # a view of channels-last features
        scores = torch.bmm(keys, rows.transpose(1, 2))  # (B, K, R*L)
        scores = scores.view(B, self.n_heads, K // self.n_heads, R * L)
        attn = None
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            attn = cpu_kernels.softmax_(scores, dim=2)  # in place, where the kernel applies
        if attn is None:
            attn = scores.softmax(dim=2)
        return attn.view(B, K, R * L)


class DownBlock1D(nn.Module):
    """ResBlock (with FiLM) at in_ch, then a stride-2 conv to out_ch; returns (h, skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, groups: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.res = ResBlock1D(in_ch, in_ch, cond_dim, groups, dropout)
        self.down = Conv1d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.res(x, c)  # (B, in_ch, L)
        return self.down(skip), skip  # (B, out_ch, L/2), (B, in_ch, L)


class UpBlock1D(nn.Module):
    """Nearest x2 upsample + conv to out_ch, concat skip, ResBlock (FiLM), cross-attention."""

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
        if x.dim() == 4 and not torch.is_grad_enabled():
            h = self._upsample_conv(x)  # the same function, without the upsampled copy
        else:
            scale = (1.0, 2.0) if x.dim() == 4 else 2.0  # the length only
            h = self.up(F.interpolate(x, scale_factor=scale, mode="nearest"))  # (B, out_ch, 2L)
        h = self.res(torch.cat([h, skip], dim=1), c)  # (B, out_ch, 2L)
        return self.attn(h, kv)

    def _upsample_conv(self, x: Tensor) -> Tensor:
        """up(nearest x2 upsample of x) from x itself: U-Net features (B, C, 1, L) ->
        (B, out_ch, 1, 2L), channels-last.

        With u[2i] = u[2i+1] = x[i] and taps (w0, w1, w2), output 2i is w0 x[i-1] + (w1+w2) x[i]
        and output 2i+1 is (w0+w1) x[i] + w2 x[i+1]: one convolution of x with 2*out_ch
        filters. Its channels-last output (B, L, [even | odd]) is the interleaved sequence.
        """
        w, bias = self.up.weight, self.up.bias  # (out_ch, C, 3), (out_ch,)
        zero = torch.zeros_like(w[..., :1])
        even = torch.cat((w[..., :1], w[..., 1:2] + w[..., 2:], zero), dim=-1)
        odd = torch.cat((zero, w[..., :1] + w[..., 1:2], w[..., 2:]), dim=-1)
        weight = torch.cat((even, odd)).unsqueeze(2)  # (2 out_ch, C, 1, 3)
        y = F.conv2d(x, weight, torch.cat((bias, bias)), padding=(0, 1))  # (B, 2 out_ch, 1, L)
        B, _, _, L = y.shape
        y = y.permute(0, 2, 3, 1).reshape(B, 1, 2 * L, -1)  # a view when y is channels-last
        return y.permute(0, 3, 1, 2)  # (B, out_ch, 1, 2L)


@dataclass(frozen=True)
class UNetCondition:
    """Everything UNet1D needs from z, computed once per forecast window.

    z_part: (B, cond_dim) z half of the ConditionProjector.
    kv: one AttentionKV per cross-attention layer.
    extra_feat: (B, C0, 1, L) the first convolution applied to the extra input channels (the
        point forecast), which do not change from step to step; None if not given.
    n_repeat: the condition serves n_repeat * B rows laid out window-major (rows b*R ..
        b*R + R-1 belong to window b), like `tensor.repeat_interleave(n_repeat, 0)`, without
        materialising the copies.
    """

    z_part: Tensor
    kv: tuple[AttentionKV, ...]
    extra_feat: Tensor | None = None
    n_repeat: int = 1

    @property
    def batch_size(self) -> int:
        return self.z_part.shape[0] * self.n_repeat

    def repeat(self, n: int) -> UNetCondition:
        return repeat_condition(self, n)


def repeat_condition(cond: UNetCondition, n: int) -> UNetCondition:
    """Condition for n * B window-major trajectories (tensor.repeat_interleave(n, 0))."""
    assert n >= 1, "repeat count must be >= 1"
    return replace(cond, n_repeat=cond.n_repeat * n)


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
        assert len(channels) >= 1
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
        self.final_norm = GroupNorm(group_count(channels[0], groups), channels[0])
        self.final_conv = Conv1d(channels[0], n_vars, 1)

    # ---- condition caching ------------------------------------------------------------------

    def _attn_layers(self) -> list[VariateCrossAttention]:
        return [self.mid_attn] + [up.attn for up in self.ups]

    def encode_condition(self, z: Tensor, extra: Tensor | None = None) -> UNetCondition:
        """z (B, N, d_model), optional extra (B, E, H) -> UNetCondition holding every
        quantity that depends on them alone (not on the noisy state or the step)."""
        kv = tuple(attn.kv(z) for attn in self._attn_layers())
        extra_feat = None
        if extra is not None:
            assert extra.shape[1] == self.extra_in_channels, "extra has the wrong channel count"
            w = self.init_conv.weight[:, self.n_vars :]  # the extra channels' share of the conv
            extra_feat = F.conv2d(
                to_features(self._pad(extra)), w.unsqueeze(2), self.init_conv.bias, padding=(0, 3)
            )  # (B, C0, 1, L) channels-last
        return UNetCondition(z_part=self.cond_proj.encode(z), kv=kv, extra_feat=extra_feat)

    def _pad(self, x: Tensor) -> Tensor:
        """Replicate-pad the length to a multiple of 2^(levels-1)."""
        pad = -x.shape[-1] % self.multiple
        return F.pad(x, (0, pad), mode="replicate") if pad else x

    def _first_conv(self, x: Tensor, cond: UNetCondition, extra: Tensor | None) -> Tensor:
        """init_conv of [x, extra] as U-Net features (R*B, C0, 1, L); reuses cond.extra_feat
        when it is there."""
        if cond.extra_feat is not None:
            assert extra is None, "extra was already given to encode_condition"
            w = self.init_conv.weight[:, : self.n_vars]
            h = F.conv2d(to_features(self._pad(x)), w.unsqueeze(2), padding=(0, 3))
            B = cond.extra_feat.shape[0]
            extra_feat = cond.extra_feat.to(h.dtype)  # bfloat16 under autocast: no mixed add
            h.view(B, -1, *extra_feat.shape[1:]).add_(extra_feat.unsqueeze(1))
            return h  # (R*B, C0, 1, L) channels-last
        if self.extra_in_channels:
            assert extra is not None and extra.shape[1] == self.extra_in_channels
            x = torch.cat([x, extra], dim=1)  # (R*B, N+E, H)
        else:
            assert extra is None, "extra given but extra_in_channels == 0"
        return self.init_conv(to_features(self._pad(x)))

    def _global_cond(self, cond: UNetCondition, t: Tensor | int | float, rows: int) -> Tensor:
        """FiLM vector: (B, cond_dim), one per window, for a scalar t (embedded once; each
        row serves its window's R trajectories, see `film`); (rows, cond_dim) for one t per
        row."""
        device = cond.z_part.device
        if isinstance(t, (int, float)):  # a fill kernel: no host-to-device copy, no sync
            t = torch.full((1,), float(t), device=device)
        t = torch.as_tensor(t, device=device)
        if t.numel() == 1:
            t_emb = self.time_mlp(t.reshape(1))  # (1, time_dim)
            return self.cond_proj(cond.z_part, t_emb)  # (B, cond_dim)
        assert t.shape == (rows,), f"t must be scalar or shape ({rows},), got {tuple(t.shape)}"
        t_emb = self.time_mlp(t)  # (R*B, time_dim)
        z_part = cond.z_part.repeat_interleave(cond.n_repeat, 0)  # (R*B, cond_dim)
        return self.cond_proj(z_part, t_emb)

    # ---- forward ------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor | int | float,
        cond: UNetCondition | Tensor,
        extra: Tensor | None = None,
    ) -> Tensor:
        """x (R*B, N, H), t scalar or (R*B,), cond from encode_condition (or raw z (R*B, N, d)),
        extra (R*B, E, H) when extra_in_channels > 0 unless given to encode_condition
        -> (R*B, N, H)."""
        if isinstance(cond, Tensor):
            cond = self.encode_condition(cond)
        rows, _, H = x.shape
        assert rows == cond.batch_size, f"x has {rows} rows, condition serves {cond.batch_size}"
        with float32_region(x.device.type):  # as the FiLM layers
            c = self._global_cond(cond, t, rows)  # (B or R*B, cond_dim)
        h = self._first_conv(x, cond, extra)  # (R*B, C0, 1, L) channels-last, L = H padded
        skips = []
        for down in self.downs:
            h, skip = down(h, c)
            skips.append(skip)
        mid_kv, *up_kvs = cond.kv
        h = self.mid_res1(h, c)  # (R*B, C_last, L / 2^k)
        h = self.mid_attn(h, mid_kv)
        h = self.mid_res2(h, c)
        for up, kv in zip(self.ups, up_kvs):
            h = up(h, skips.pop(), c, kv)
        out = self.final_conv(self.final_norm.norm_act(h, act=True))  # (R*B, N, 1, L)
        return out.squeeze(2)[..., :H].contiguous()  # (R*B, N, H)
