"""Fused C kernels for CPU sampling, compiled once per machine and called through ctypes.

On a CPU, sampling spent about a quarter of its time in the U-Net's group norms. With torch
operations a norm with FiLM and SiLU makes five passes over the features (channel sums, squares,
their sums, scale and shift, SiLU), and torch's SiLU alone took 3.5 times as long as a copy.
``group_norm_act`` does it in two: one reads the features for the statistics, one writes
``silu(norm(x) * (1 + gamma) + beta) + residual`` (each part optional), with a polynomial exp
that the compiler vectorises. ``softmax_`` is a softmax along a short middle axis (the
cross-attention's variates), where torch's kernel took 1.5-2 times as long.
``cross_attention_add`` is the whole folded cross-attention after its norm (scores, a softmax
per head, the second matmul and the residual) in one pass over tiles of positions, so the
scores never leave the cache: 1.4-1.7 against 1.8-3.5 ms for torch's bmm, the softmax above and
baddbmm at the quick benchmark's sizes (608 rows of 16-64 channels, one thread).

``group_norm_act`` and ``cross_attention_add`` exist for float32 and for bfloat16 features
(bf16 autocast, ``--use_amp``): one C source instantiated per type (``VARIANTS``); the
bfloat16 variants compute in float32 and round once on output, so that features stay bf16
between oneDNN's bf16 convolutions, with no casts.

The source below is compiled with the system C compiler (``$CC``, else ``cc`` or ``gcc``) in
a second or two on first use, into ``$DIFFUSION_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/itransformer_diffusion`` (default ``~/.cache/itransformer_diffusion``), keyed
by the source, the flags and the CPU, since ``-march=native`` code may not run on another CPU.
The kernels run their outer loops on OpenMP threads; torch's pip wheels ship GNU OpenMP, so they
share torch's thread pool and follow ``torch.set_num_threads``. Where no compiler with OpenMP
is found, or with ``DIFFUSION_CPU_KERNELS=0``, ``load()`` returns None and the callers use torch
operations (tests check both against torch's own functions).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

PRELUDE = r"""
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* exp(x) for float32 within ~2 ulp (Cephes' expf polynomial), written so that the compiler
   vectorises the loops that call it; x is clamped to [-87, 88], where 2^n stays normal. */
static inline float poly_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int i; } two_n;
    two_n.i = ((int)n + 127) << 23;
    return p * two_n.f;
}

/* silu(v) = v * sigmoid(v), vectorisable */
static inline float silu(float v) { return v / (1.0f + poly_exp(-v)); }

/* bfloat16 <-> float32: the upper half of the float's bits, rounded to nearest even (NaN kept
   a quiet NaN), as torch converts */
static inline float bf16_load(unsigned short v) {
    union { unsigned int i; float f; } u;
    u.i = (unsigned int)v << 16;
    return u.f;
}
static inline unsigned short bf16_store(float f) {
    union { float f; unsigned int i; } u;
    u.f = f;
    if (f != f) return 0x7fc0;
    u.i += 0x7fffu + ((u.i >> 16) & 1u);
    return (unsigned short)(u.i >> 16);
}

/* n float32 values -> bfloat16, with the CPU's conversion instruction where it has one */
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
#include <immintrin.h>
static void bf16_store_n(void *dst, const float *restrict src, long n) {
    unsigned short *restrict d = dst;
    long j = 0;
    for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256((__m256i *)(d + j),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
    for (; j < n; ++j) d[j] = bf16_store(src[j]);
}
#else
static void bf16_store_n(void *dst, const float *restrict src, long n) {
    unsigned short *restrict d = dst;
    #pragma omp simd
    for (long j = 0; j < n; ++j) d[j] = bf16_store(src[j]);
}
#endif

#define VL 16
#define RB 8

"""

# Kernels over U-Net features, instantiated once per feature type (see VARIANTS): FEAT is the
# C type, LD converts it to float32 (bf16_store_n converts back), SFX ends the exported name,
# WIDE is 1 for float32 features (read and written in place) and 0 for bfloat16 ones
# (converted a block at a time), and ACC is the type of the statistics' sums.
FEATURE_KERNELS = r"""
/* Group norm of rows x (B, L, C) (channels last) with G groups of C/G channels, affine weight
   and bias (C), then optionally FiLM, SiLU and a residual:
       out = silu?((x - mean) * rstd * weight + bias) * (1 + gamma) + beta) + residual?
   gamma and beta are (B / R, C): row b uses row b / R (window-major samples); NULL for none.
   residual is (B, L, C) or NULL. out may not alias x. x, residual and out hold FEAT
   values (float32 or bfloat16) and the arithmetic is float32. The sums for the statistics
   are float64 for float32 features and float32 for bfloat16 ones, where they are exact: 8-bit
   significands square to 16 bits, and a tile's lane sums a few hundred values at most. Both
   passes run over tiles of k positions (k * C >= 64 values, the per-channel constants
   repeated k times), so that the inner loops stay long when there are few channels. */
void group_norm_act_SFX(const FEAT *restrict x, FEAT *restrict out, long B, long L, long C,
                    long G, const float *restrict weight, const float *restrict bias,
                    const float *restrict gamma, const float *restrict beta, long R, float eps,
                    int act, const FEAT *restrict residual) {
    const long cg = C / G, k = C >= 64 ? 1 : (64 + C - 1) / C, T = k * C;
    const long tiles = L / k, rest = L - tiles * k;
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < B; ++b) {
        const FEAT *xb = x + b * L * C;
        ACC sum[T], sumsq[T];
        float scale[T], shift[T];
        for (long j = 0; j < T; ++j) { sum[j] = 0.0; sumsq[j] = 0.0; }
        for (long i = 0; i < tiles; ++i) {
            const FEAT *xt = xb + i * T;
            #pragma omp simd
            for (long j = 0; j < T; ++j) { ACC v = LD(xt[j]); sum[j] += v; sumsq[j] += v * v; }
        }
        for (long l = tiles * k; l < L; ++l) {
            const FEAT *xr = xb + l * C;
            #pragma omp simd
            for (long c = 0; c < C; ++c) { ACC v = LD(xr[c]); sum[c] += v; sumsq[c] += v * v; }
        }
        for (long m = 1; m < k; ++m) {
            for (long c = 0; c < C; ++c) { sum[c] += sum[m * C + c]; sumsq[c] += sumsq[m * C + c]; }
        }
        for (long g = 0; g < G; ++g) {
            double s = 0.0, q = 0.0;
            for (long c = g * cg; c < (g + 1) * cg; ++c) { s += sum[c]; q += sumsq[c]; }
            const double n = (double)(L * cg), mean = s / n;
            double var = q / n - mean * mean;
            if (var < 0.0) var = 0.0;
            const float rstd = (float)(1.0 / sqrt(var + eps));
            for (long c = g * cg; c < (g + 1) * cg; ++c) {
                float sc = rstd * weight[c], sh = bias[c] - (float)mean * sc;
                if (gamma) {
                    const float g1 = 1.0f + gamma[(b / R) * C + c];
                    sc *= g1;
                    sh = sh * g1 + beta[(b / R) * C + c];
                }
                scale[c] = sc;
                shift[c] = sh;
            }
        }
        for (long j = C; j < T; ++j) { scale[j] = scale[j - C]; shift[j] = shift[j - C]; }
        FEAT *ob = out + b * L * C;
        const FEAT *rb = residual ? residual + b * L * C : NULL;
        float tile[WIDE ? 1 : T];  /* bfloat16: a tile's float32 results before rounding */
        for (long i = 0; i <= tiles; ++i) {
            const long n = i < tiles ? T : rest * C;  /* the last, partial tile */
            const FEAT *xt = xb + i * T, *rt = rb ? rb + i * T : NULL;
            float *restrict ot = WIDE ? (float *)(void *)(ob + i * T) : tile;
            if (act && rt) {  /* one loop per case */
                #pragma omp simd
                for (long j = 0; j < n; ++j)
                    ot[j] = silu(LD(xt[j]) * scale[j] + shift[j]) + LD(rt[j]);
            } else if (act) {
                #pragma omp simd
                for (long j = 0; j < n; ++j) ot[j] = silu(LD(xt[j]) * scale[j] + shift[j]);
            } else if (rt) {
                #pragma omp simd
                for (long j = 0; j < n; ++j) ot[j] = LD(xt[j]) * scale[j] + shift[j] + LD(rt[j]);
            } else {
                #pragma omp simd
                for (long j = 0; j < n; ++j) ot[j] = LD(xt[j]) * scale[j] + shift[j];
            }
            if (!WIDE) bf16_store_n(ob + i * T, tile, n);
        }
    }
}

/* Cross-attention of positions over a window's variates, with the query and output
   projections folded into keys and values (see VariateCrossAttention), plus the residual:
       out[b, p] = h[b, p] + sum_k a[b, p, k] values[b, k],
       a[b, p, head h] = softmax over the N variates of keys[b, h*N .. h*N+N-1] @ hn[b, p].
   h, hn, out: (B, P, C) FEAT values, keys, values: (B, K = heads * N, C) float32. Positions
   go 16 at a time (one vector register per row of a tile), the matrix products as register-blocked
   multiply-adds over 8 keys or 8 channels at once; the scores never leave the cache. */
int cross_attention_add_SFX(const FEAT *restrict h, const FEAT *restrict hn,
                        const float *restrict keys, const float *restrict values,
                        FEAT *restrict out, long B, long P, long C, long heads, long N) {
    const long K = heads * N, TL = 256, tiles = (P + TL - 1) / TL;
    const long Kp = (K + RB - 1) / RB * RB, Cp = (C + RB - 1) / RB * RB;
    const size_t floats = (size_t)(Kp * C + K * Cp + VL * (C + Kp + Cp) + (WIDE ? 0 : VL * C));
    int failed = 0;
    #pragma omp parallel for collapse(2) schedule(static)
    for (long b = 0; b < B; ++b) {
        for (long t = 0; t < tiles; ++t) {
            /* on the heap: with hundreds of channels this outgrows a small thread stack */
            float *buf = malloc(floats * sizeof(float));
            if (!buf) {
                #pragma omp atomic write
                failed = 1;
                continue;
            }
            float *kz = buf, *vz = kz + Kp * C;  /* keys, values zero-padded to whole blocks */
            float (*xt)[VL] = (float (*)[VL])(vz + K * Cp);  /* transposed: position last */
            float (*s)[VL] = xt + C, (*ot)[VL] = s + Kp;
            float *block = (float *)(ot + Cp);  /* VL positions in float32 (bfloat16 only) */
            for (long k = 0; k < Kp; ++k)
                for (long c = 0; c < C; ++c)
                    kz[k * C + c] = k < K ? keys[(b * K + k) * C + c] : 0.0f;
            for (long k = 0; k < K; ++k)
                for (long c = 0; c < Cp; ++c)
                    vz[k * Cp + c] = c < C ? values[(b * K + k) * C + c] : 0.0f;
            const long end = (t + 1) * TL < P ? (t + 1) * TL : P;
            for (long p0 = t * TL; p0 < end; p0 += VL) {
                const long m = end - p0 < VL ? end - p0 : VL;
                const FEAT *hb = hn + (b * P + p0) * C;
                const float *x = (const float *)hb;
                if (!WIDE) {  /* the m positions' m * C contiguous values, converted at once */
                    #pragma omp simd
                    for (long j = 0; j < m * C; ++j) block[j] = LD(hb[j]);
                    x = block;
                }
                for (long i = 0; i < VL; ++i)
                    for (long c = 0; c < C; ++c) xt[c][i] = i < m ? x[i * C + c] : 0.0f;
                for (long k0 = 0; k0 < Kp; k0 += RB) {  /* scores s = keys @ x */
                    float acc[RB][VL] = {{0.0f}};
                    for (long c = 0; c < C; ++c) {
                        #pragma GCC unroll 8
                        for (long j = 0; j < RB; ++j) {
                            const float w = kz[(k0 + j) * C + c];
                            #pragma omp simd
                            for (long i = 0; i < VL; ++i) acc[j][i] += w * xt[c][i];
                        }
                    }
                    #pragma GCC unroll 8
                    for (long j = 0; j < RB; ++j)
                        #pragma omp simd
                        for (long i = 0; i < VL; ++i) s[k0 + j][i] = acc[j][i];
                }
                for (long hd = 0; hd < heads; ++hd) {  /* softmax of each head */
                    float (*sh)[VL] = s + hd * N, peak[VL], total[VL];
                    #pragma omp simd
                    for (long i = 0; i < VL; ++i) { peak[i] = sh[0][i]; total[i] = 0.0f; }
                    for (long n = 1; n < N; ++n)
                        #pragma omp simd
                        for (long i = 0; i < VL; ++i)
                            peak[i] = sh[n][i] > peak[i] ? sh[n][i] : peak[i];
                    for (long n = 0; n < N; ++n)
                        #pragma omp simd
                        for (long i = 0; i < VL; ++i) {
                            sh[n][i] = poly_exp(sh[n][i] - peak[i]);
                            total[i] += sh[n][i];
                        }
                    #pragma omp simd
                    for (long i = 0; i < VL; ++i) total[i] = 1.0f / total[i];
                    for (long n = 0; n < N; ++n)
                        #pragma omp simd
                        for (long i = 0; i < VL; ++i) sh[n][i] *= total[i];
                }
                for (long c0 = 0; c0 < Cp; c0 += RB) {  /* ot = values^T @ a */
                    float acc[RB][VL] = {{0.0f}};
                    for (long k = 0; k < K; ++k) {
                        #pragma GCC unroll 8
                        for (long j = 0; j < RB; ++j) {
                            const float w = vz[k * Cp + c0 + j];
                            #pragma omp simd
                            for (long i = 0; i < VL; ++i) acc[j][i] += w * s[k][i];
                        }
                    }
                    #pragma GCC unroll 8
                    for (long j = 0; j < RB; ++j)
                        #pragma omp simd
                        for (long i = 0; i < VL; ++i) ot[c0 + j][i] = acc[j][i];
                }
                const FEAT *hr = h + (b * P + p0) * C;
                FEAT *o = out + (b * P + p0) * C;
                if (WIDE) {
                    float *of = (float *)(void *)o;
                    for (long i = 0; i < m; ++i)
                        for (long c = 0; c < C; ++c) of[i * C + c] = LD(hr[i * C + c]) + ot[c][i];
                } else {  /* transposed into the block, then the residual and rounding at once */
                    for (long i = 0; i < m; ++i)
                        for (long c = 0; c < C; ++c) block[i * C + c] = ot[c][i];
                    #pragma omp simd
                    for (long j = 0; j < m * C; ++j) block[j] += LD(hr[j]);
                    bf16_store_n(o, block, m * C);
                }
            }
            free(buf);
        }
    }
    return failed;
}
"""

SOFTMAX = r"""
/* In-place softmax of x (outer, n, inner) along n, vectorised along inner. */
void softmax_mid(float *restrict x, long outer, long n, long inner) {
    const long block = 256;
    #pragma omp parallel for collapse(2) schedule(static)
    for (long o = 0; o < outer; ++o) {
        for (long i0 = 0; i0 < inner; i0 += block) {
            float *base = x + o * n * inner + i0;
            const long m = inner - i0 < block ? inner - i0 : block;
            float peak[block], total[block];
            #pragma omp simd
            for (long i = 0; i < m; ++i) { peak[i] = base[i]; total[i] = 0.0f; }
            for (long k = 1; k < n; ++k) {
                const float *row = base + k * inner;
                #pragma omp simd
                for (long i = 0; i < m; ++i) peak[i] = row[i] > peak[i] ? row[i] : peak[i];
            }
            for (long k = 0; k < n; ++k) {
                float *row = base + k * inner;
                #pragma omp simd
                for (long i = 0; i < m; ++i) {
                    row[i] = poly_exp(row[i] - peak[i]);
                    total[i] += row[i];
                }
            }
            #pragma omp simd
            for (long i = 0; i < m; ++i) total[i] = 1.0f / total[i];
            for (long k = 0; k < n; ++k) {
                float *row = base + k * inner;
                #pragma omp simd
                for (long i = 0; i < m; ++i) row[i] *= total[i];
            }
        }
    }
}
"""

# torch dtype -> (exported name suffix, C type, LD, WIDE, ACC)
VARIANTS = {
    torch.float32: ("f32", "float", "", 1, "double"),
    torch.bfloat16: ("bf16", "unsigned short", "bf16_load", 0, "float"),
}


def _instantiate(suffix: str, ctype: str, load: str, wide: int, acc: str) -> str:
    """FEATURE_KERNELS for one feature type, with macros that end with it."""
    macros = {"FEAT": ctype, "LD(v)": f"{load}(v)", "WIDE": wide, "ACC": acc}
    return "\n".join([
        *(f"#define {name} {value}" for name, value in macros.items()),
        FEATURE_KERNELS.replace("_SFX", "_" + suffix),
        *(f"#undef {name.split('(')[0]}" for name in macros), "",
    ])  # fmt: skip


SOURCE = PRELUDE + SOFTMAX + "".join(_instantiate(*v) for v in VARIANTS.values())


FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared",
         "-fPIC"]  # fmt: skip
LIBS = ["-lm"]

_ptr, _long = ctypes.c_void_p, ctypes.c_long
_GROUP_NORM_ARGS = [_ptr, _ptr, _long, _long, _long, _long, _ptr, _ptr, _ptr, _ptr, _long,
                    ctypes.c_float, ctypes.c_int, _ptr]  # fmt: skip
_ATTENTION_ARGS = [_ptr, _ptr, _ptr, _ptr, _ptr, _long, _long, _long, _long, _long]
_SIGNATURES = {"softmax_mid": [_ptr, _long, _long, _long]}
_RETURNS = {}  # None (void) unless given
for _suffix, *_ in VARIANTS.values():
    _SIGNATURES[f"group_norm_act_{_suffix}"] = _GROUP_NORM_ARGS
    _SIGNATURES[f"cross_attention_add_{_suffix}"] = _ATTENTION_ARGS
    _RETURNS[f"cross_attention_add_{_suffix}"] = ctypes.c_int


def _cpu_id() -> str:
    """The CPU's model and feature flags (Linux), or what platform knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    if os.environ.get("DIFFUSION_KERNEL_CACHE"):
        return Path(os.environ["DIFFUSION_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "itransformer_diffusion"


def _compile(compiler: str, target: Path) -> None:
    """Compile SOURCE into target; a temporary name and a rename keep parallel processes
    (several ranks, several test workers) from loading a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / "kernels.c", Path(tmp) / target.name
        src.write_text(SOURCE)
        cmd = [compiler, *FLAGS, str(src), "-o", str(lib), *LIBS]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        os.replace(lib, target)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed: one warning)."""
    if os.environ.get("DIFFUSION_CPU_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    key = "\0".join([SOURCE, " ".join(FLAGS + LIBS), compiler, _cpu_id(), torch.__version__])
    target = _cache_dir() / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _compile(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(
            f"fused CPU kernels unavailable, using torch operations: {detail}", stacklevel=2
        )
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _RETURNS.get(name)
    return lib


def _rows_ok(t: Tensor | None, like: Tensor) -> bool:
    """t is None or U-Net features like ``like``: same shape and dtype (one the kernels are
    built for), on the CPU, channels-last."""
    return t is None or (
        t.dtype == like.dtype
        and t.dtype in VARIANTS
        and t.device.type == "cpu"
        and t.shape == like.shape
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def group_norm_act(
    x: Tensor,
    num_groups: int,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    act: bool = False,
    residual: Tensor | None = None,
) -> Tensor | None:
    """U-Net features x (B, C, 1, L), float32 or bfloat16 and channels-last ->
    ``silu?(group_norm(x) * (1 + gamma) + beta) + residual?`` like x, or None where the kernel
    does not apply (not compiled, other dtypes, shapes or layouts). gamma and beta are (W, C)
    with W dividing B (row b uses row b // (B / W)); residual is like x (its dtype too). The
    arithmetic is float32 whatever x's dtype, so a bfloat16 x is rounded once, on output. No
    autograd: for inference only."""
    if x.dim() != 4 or x.shape[2] != 1 or not _rows_ok(x, x) or not _rows_ok(residual, x):
        return None
    B, C, _, L = x.shape
    lib = load() if C % num_groups == 0 else None
    if lib is None:
        return None
    R = 1
    if gamma is not None:
        W = gamma.shape[0]
        if gamma.shape != (W, C) or beta is None or beta.shape != (W, C) or not W or B % W:
            return None
        R = B // W
    params = [t.detach().float().contiguous() if t is not None else None
              for t in (weight, bias, gamma, beta)]  # fmt: skip
    if any(t is not None and t.device.type != "cpu" for t in params):
        return None
    if params[0].shape != (C,) or params[1].shape != (C,):
        return None
    out = torch.empty_like(x)  # channels-last, as x
    ptr = [t.data_ptr() if t is not None else None for t in (x, out, *params, residual)]
    kernel = getattr(lib, "group_norm_act_" + VARIANTS[x.dtype][0])
    kernel(ptr[0], ptr[1], B, L, C, num_groups, ptr[2], ptr[3], ptr[4], ptr[5], R, eps, int(act),
           ptr[6])  # fmt: skip
    return out


def softmax_(x: Tensor, dim: int) -> Tensor | None:
    """Softmax of a contiguous float32 CPU tensor along ``dim``, in place (x is returned), or
    None where the kernel does not apply. Meant for a short ``dim`` before a long contiguous
    tail, where torch's kernel was several times slower than a pass over the data."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
        return None
    lib = load() if x.numel() else None
    if lib is None:
        return None
    dim = dim % x.dim()
    outer, inner = math.prod(x.shape[:dim]), math.prod(x.shape[dim + 1 :])
    lib.softmax_mid(x.data_ptr(), outer, x.shape[dim], inner)
    return x


def cross_attention_add(
    h: Tensor, hn: Tensor, keys: Tensor, values: Tensor, heads: int
) -> Tensor | None:
    """``h + softmax(keys @ hn)^T @ values`` with a softmax per head over its variates, as one
    kernel: U-Net features h and normalised hn (R*B, C, 1, L), float32 or bfloat16 (both the
    same) and channels-last, window-major rows; folded float32 keys and values (B, heads*N, C) (see
    ``VariateCrossAttention``) -> like h, or None where the kernel does not apply. The scores
    (B, heads*N, R*L) are never written out. No autograd: for inference only."""
    if h.dim() != 4 or h.shape[2] != 1 or not _rows_ok(h, h) or not _rows_ok(hn, h):
        return None
    RB, C, _, L = h.shape
    if keys.dim() != 3 or keys.shape != values.shape or keys.shape[2] != C:
        return None
    B, K, _ = keys.shape
    if (
        not B
        or RB % B
        or K % heads
        or not all(
            t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
            for t in (keys, values)
        )
    ):
        return None
    lib = load()
    if lib is None:
        return None
    out = torch.empty_like(h)  # channels-last, as h
    kernel = getattr(lib, "cross_attention_add_" + VARIANTS[h.dtype][0])
    failed = kernel(h.data_ptr(), hn.data_ptr(), keys.data_ptr(), values.data_ptr(),
                    out.data_ptr(), B, RB // B * L, C, heads, K // heads)  # fmt: skip
    return None if failed else out  # out of memory for its tiles: torch's operations instead
