"""Tests for the parameter-free diffusion math in ``diffusion/`` (CPU, float64 where it matters)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from diffusion import (
    DEFAULT_SPACING,
    PARAMETERIZATIONS,
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
    alpha_bar_at,
    alpha_bar_prev,
    betas,
    ddim_update,
    ddpm_posterior,
    diffusion_loss,
    draws_noise,
    get_sampler,
    log_snr,
    make_alpha_bar,
    posterior_variance,
    q_sample,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    timesteps,
    to_x0_eps,
    training_target,
)

F64 = torch.float64
# DPMSolverMultistepScheduler.set_timesteps calls np.array on a tensor (diffusers 0.42, numpy 2)
NUMPY_2_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 50])
def test_alpha_bar_basic_properties(schedule: str, T: int) -> None:
    ab = make_alpha_bar(schedule, T)
    assert ab.dtype == F64 and ab.device.type == "cpu" and ab.shape == (T,)
    assert torch.all(ab > 0) and torch.all(ab < 1)
    assert torch.all(ab[1:] < ab[:-1])
    ab[0] = -1.0  # a caller mutating its copy must not change later results
    assert make_alpha_bar(schedule, T)[0] > 0


def test_linear_beta_endpoints() -> None:
    b = betas(make_alpha_bar("linear", 1000))
    assert b[0].item() == pytest.approx(1e-4, abs=1e-12)
    assert b[-1].item() == pytest.approx(0.02, abs=1e-12)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=F64))
    b100 = betas(make_alpha_bar("linear", 100))  # improved-diffusion scaling 1000/T
    assert b100[0].item() == pytest.approx(1e-3) and b100[-1].item() == pytest.approx(0.2)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_matches_closed_form(T: int) -> None:
    s = 0.008
    ab = make_alpha_bar("cosine", T)
    b = betas(ab)
    assert torch.all(b <= 0.999 + 1e-12)
    assert b[-1].item() == pytest.approx(0.999)  # the last β is clipped

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(T, dtype=F64)
    closed = f((t + 1) / T) / f(torch.zeros(1, dtype=F64))
    unclipped = int(torch.nonzero(b >= 0.999 - 1e-12)[0])  # closed form holds before the clip
    assert torch.allclose(ab[:unclipped], closed[:unclipped], rtol=1e-9, atol=1e-15)
    assert ab[-1].item() == pytest.approx(closed[-2].item() * 0.001, rel=1e-9)


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError, match="linear.*cosine"):
        make_alpha_bar("quadratic", 100)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_derived_helpers(schedule: str) -> None:
    ab = make_alpha_bar(schedule, 200)
    b = betas(ab)
    assert torch.allclose(torch.cumprod(1 - b, 0), ab, rtol=1e-12)
    prev = alpha_bar_prev(ab)
    assert prev[0].item() == 1.0 and torch.equal(prev[1:], ab[:-1])
    pv = posterior_variance(ab)
    assert pv[0].item() == 0.0
    assert torch.all(pv[1:] > 0) and torch.all(pv <= b)
    expected = (1 - ab[:-1]) / (1 - ab[1:]) * b[1:]
    assert torch.allclose(pv[1:], expected, rtol=1e-12)
    lam = log_snr(ab)
    assert torch.allclose(torch.sigmoid(lam), ab, rtol=1e-10)  # sigmoid(λ) = ᾱ
    assert torch.all(lam[1:] < lam[:-1])


# ----------------------------------------------------------------------------- timesteps


def test_cosine_schedule_is_diffusers_squaredcos_cap_v2() -> None:
    """Ours (float64) and diffusers' (float32) cosine β agree to float32 rounding, so the
    comparisons with diffusers' schedulers below run on the same schedule."""
    theirs = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas
    ours = betas(make_alpha_bar("cosine", 1000))
    assert (theirs.double() - ours).abs().max().item() < 1e-7


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize(("T", "steps"), [(1000, 1), (1000, 7), (1000, 20), (1000, 999), (10, 3)])
def test_timesteps_properties(spacing: str, T: int, steps: int) -> None:
    ts = timesteps(T, steps, spacing)
    assert len(ts) == steps and len(set(ts)) == steps
    assert all(isinstance(t, int) for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[-1] >= 0 and ts[0] <= T - 1
    if spacing != "leading":  # leading starts at (steps-1)·(T//steps)
        assert ts[0] == T - 1
    if spacing == "linspace":  # ends at round((T-1)/steps)
        assert ts[-1] >= 1


# (spacing, diffusers scheduler, its timestep_spacing) of the same grid; DDIMScheduler's
# "linspace" is not our "linspace" (that is DPMSolverMultistepScheduler's) and differs from our
# "linear" at rounding ties, so "linear" has no diffusers twin.
DIFFUSERS_GRIDS = [
    ("leading", DDIMScheduler, "leading"),
    ("leading", DDPMScheduler, "leading"),
    ("trailing", DDIMScheduler, "trailing"),
    ("trailing", DPMSolverMultistepScheduler, "trailing"),
    ("trailing", DDPMScheduler, "trailing"),
    ("linspace", DPMSolverMultistepScheduler, "linspace"),
]


@NUMPY_2_WARNING
@pytest.mark.parametrize(("spacing", "scheduler", "their_spacing"), DIFFUSERS_GRIDS)
def test_timesteps_match_diffusers(spacing: str, scheduler: type, their_spacing: str) -> None:
    """Each spacing is diffusers' ``scheduler.timesteps`` after ``set_timesteps(steps)``
    (48 hits a rounding tie of the trailing grid; diffusers' trailing grid has one point too
    many, -1, for some step counts such as 217, which are left out here)."""
    for T in (1000, 50):
        sched = scheduler(num_train_timesteps=T, timestep_spacing=their_spacing)
        for steps in (1, 2, 3, 5, 7, 10, 20, 48, 49, 50, 100, 999, 1000):
            if steps > T or (spacing == "linspace" and steps == T):
                continue
            sched.set_timesteps(steps)
            assert timesteps(T, steps, spacing) == sched.timesteps.tolist(), (T, steps)


def test_timesteps_conventions() -> None:
    assert timesteps(1000, 4, "linear") == [999, 666, 333, 0]
    assert timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert timesteps(1000, 4, "linspace") == [999, 749, 500, 250]
    assert timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    for spacing in ("leading", "trailing", "linear"):
        assert timesteps(50, 50, spacing) == list(range(49, -1, -1))
    assert timesteps(50, 49, "linspace") == list(range(49, 0, -1))
    assert timesteps(1000, np.int64(4), "trailing") == [999, 749, 499, 249]


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, None])
def test_timesteps_bad_steps(steps) -> None:
    for spacing in ("trailing", "leading", "linear"):
        with pytest.raises(ValueError, match=r"steps must be an integer from 1 to 1000 for T=1000"):
            timesteps(1000, steps, spacing)


def test_linspace_takes_at_most_T_minus_1_steps() -> None:
    """T+1 points in [0, T-1] less the last: T of them would repeat a timestep."""
    with pytest.raises(ValueError, match=r"from 1 to 999 for T=1000 and 'linspace' spacing"):
        timesteps(1000, 1000, "linspace")


def test_timesteps_bad_spacing() -> None:
    with pytest.raises(ValueError, match="trailing.*linspace.*leading.*linear"):
        timesteps(1000, 10, "uniform")


# ----------------------------------------------------------------------------- forward process


def test_q_sample_formula_per_batch_element() -> None:
    ab = make_alpha_bar("cosine", 100)
    x0 = torch.randn(3, 4, 5, generator=_gen(0))
    noise = torch.randn(3, 4, 5, generator=_gen(1))
    t = torch.tensor([0, 50, 99])
    xt = q_sample(x0, t, ab, noise)
    assert xt.dtype == torch.float32 and xt.shape == x0.shape
    for i, ti in enumerate(t.tolist()):
        a = ab[ti].item()
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)
    a_b = alpha_bar_at(ab, t, x0)
    assert a_b.shape == (3, 1, 1) and a_b.dtype == torch.float32


def test_q_sample_statistics() -> None:
    ab = make_alpha_bar("linear", 1000)
    n = 200_000
    x0 = torch.full((n, 1), 1.5, dtype=F64)
    t = torch.full((n,), 300, dtype=torch.long)
    xt = q_sample(x0, t, ab, torch.randn(n, 1, generator=_gen(2), dtype=F64))
    a = ab[300].item()
    se = math.sqrt((1 - a) / n)
    assert abs(xt.mean().item() - math.sqrt(a) * 1.5) < 5 * se
    assert xt.var().item() == pytest.approx(1 - a, rel=0.02)


# ----------------------------------------------------------------------------- parameterization


def _batch(T: int = 1000, schedule: str = "cosine") -> tuple[torch.Tensor, ...]:
    ab = make_alpha_bar(schedule, T)
    x0 = torch.randn(64, 3, 8, generator=_gen(3), dtype=F64)
    eps = torch.randn(64, 3, 8, generator=_gen(4), dtype=F64)
    t = torch.randint(0, T, (64,), generator=_gen(5))
    t[:2] = torch.tensor([0, T - 1])  # include both extremes
    return ab, x0, eps, t


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_round_trip_recovers_x0_and_eps(schedule: str, parameterization: str) -> None:
    ab, x0, eps, t = _batch(schedule=schedule)
    xt = q_sample(x0, t, ab, eps)
    a = alpha_bar_at(ab, t, x0)
    target = training_target(x0, eps, a, parameterization)
    x0_hat, eps_hat = to_x0_eps(target, xt, a, parameterization)
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)
    # Python-float ᾱ gives the same result as the tensor path.
    a5 = ab[500].item()
    xt5 = math.sqrt(a5) * x0 + math.sqrt(1 - a5) * eps
    target5 = training_target(x0, eps, a5, parameterization)
    x0_f, eps_f = to_x0_eps(target5, xt5, a5, parameterization)
    assert torch.allclose(x0_f, x0, atol=1e-10) and torch.allclose(eps_f, eps, atol=1e-10)


def test_v_target_and_conversion_closed_form() -> None:
    a = 0.3
    x0 = torch.randn(10, generator=_gen(6), dtype=F64)
    eps = torch.randn(10, generator=_gen(7), dtype=F64)
    v = training_target(x0, eps, a, "v")
    assert torch.allclose(v, math.sqrt(a) * eps - math.sqrt(1 - a) * x0)
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    x0_hat, eps_hat = to_x0_eps(v, xt, a, "v")
    assert torch.allclose(x0_hat, math.sqrt(a) * xt - math.sqrt(1 - a) * v)
    assert torch.allclose(eps_hat, math.sqrt(1 - a) * xt + math.sqrt(a) * v)
    assert torch.equal(training_target(x0, eps, a, "eps"), eps)
    assert torch.equal(training_target(x0, eps, a, "x0"), x0)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_clip_keeps_pair_consistent(parameterization: str) -> None:
    ab, x0, eps, t = _batch(T=100)
    t = t.clamp(min=1)  # t = 0 is covered by the round trip; avoid 1/sqrt(1-ᾱ_0) amplification
    xt = q_sample(3 * x0, t, ab, eps)
    a = alpha_bar_at(ab, t, xt)
    output = 3 * torch.randn(xt.shape, generator=_gen(8), dtype=F64)
    x0_raw, _ = to_x0_eps(output, xt, a, parameterization)
    x0_hat, eps_hat = to_x0_eps(output, xt, a, parameterization, clip_x0=1.0)
    assert (x0_raw.abs() > 1).any(), "test needs some clipped entries"
    assert x0_hat.abs().max() <= 1.0
    assert torch.equal(x0_hat, x0_raw.clamp(-1, 1))
    assert torch.allclose(a.sqrt() * x0_hat + (1 - a).sqrt() * eps_hat, xt, atol=1e-10)


def test_conversion_keeps_state_dtype() -> None:
    ab = make_alpha_bar("linear", 100)
    xt = torch.randn(4, 2, 3)
    a = alpha_bar_at(ab, torch.tensor([1, 2, 3, 4]), xt.double())  # float64 ᾱ, float32 state
    for p in PARAMETERIZATIONS:
        x0_hat, eps_hat = to_x0_eps(torch.randn(4, 2, 3), xt, a, p, clip_x0=2.0)
        assert x0_hat.dtype == eps_hat.dtype == torch.float32


def test_unknown_parameterization_raises() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="eps.*x0.*v"):
        to_x0_eps(x, x, 0.5, "score")
    with pytest.raises(ValueError, match="eps.*x0.*v"):
        training_target(x, x, 0.5, "score")


# ----------------------------------------------------------------------------- losses


def test_weighted_loss_matches_hand_computation() -> None:
    B, N, H = 4, 3, 5
    x0 = torch.randn(B, N, H, generator=_gen(9), dtype=F64)
    eps = torch.randn(B, N, H, generator=_gen(10), dtype=F64)
    out = torch.randn(B, N, H, generator=_gen(11), dtype=F64)
    a = torch.rand(B, 1, 1, generator=_gen(12), dtype=F64) * 0.98 + 0.01
    w = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    num, den = 0.0, 0.0
    for b in range(B):
        ab = a[b, 0, 0].item()
        for n in range(N):
            for h in range(H):
                v = math.sqrt(ab) * eps[b, n, h].item() - math.sqrt(1 - ab) * x0[b, n, h].item()
                num += w[n].item() * (out[b, n, h].item() - v) ** 2
                den += w[n].item()
    loss = diffusion_loss(out, x0, eps, a, "v", weight=w.view(1, N, 1))
    assert loss.shape == () and loss.item() == pytest.approx(num / den, rel=1e-12)
    unweighted = diffusion_loss(out, x0, eps, a, "eps")
    assert unweighted.item() == pytest.approx(((out - eps) ** 2).mean().item(), rel=1e-12)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_loss_zero_at_target_and_differentiable(parameterization: str) -> None:
    ab, x0, eps, t = _batch(T=100)
    a = alpha_bar_at(ab, t, x0)
    out = training_target(x0, eps, a, parameterization).clone().requires_grad_(True)
    loss = diffusion_loss(out, x0, eps, a, parameterization, weight=torch.ones(1, 3, 1))
    assert loss.item() == 0.0
    (loss + diffusion_loss(out + 1.0, x0, eps, a, parameterization)).backward()
    assert out.grad is not None and torch.allclose(out.grad, torch.full_like(out, 2 / out.numel()))


# ----------------------------------------------------------------------------- sampler steps


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_posterior_is_classical_eq7(schedule: str) -> None:
    ab = make_alpha_bar(schedule, 1000)
    b, pv = betas(ab), posterior_variance(ab)
    xt = torch.randn(50, generator=_gen(13), dtype=F64)
    x0 = torch.randn(50, generator=_gen(14), dtype=F64)
    for t in (1, 10, 500, 999):
        a_t, a_p, beta = ab[t].item(), ab[t - 1].item(), b[t].item()
        mean, std = ddpm_posterior(xt, x0, a_t, a_p)
        ref = (math.sqrt(a_p) * beta * x0 + math.sqrt(1 - beta) * (1 - a_p) * xt) / (1 - a_t)
        assert torch.allclose(mean, ref, atol=1e-12)
        assert std == pytest.approx(math.sqrt(pv[t].item()), rel=1e-9)
    mean0, std0 = ddpm_posterior(xt, x0, ab[0].item(), 1.0)
    assert std0 == 0.0 and torch.allclose(mean0, x0, atol=1e-12)


@pytest.mark.parametrize("pair", [(1, 0), (500, 499), (999, 998), (999, 666), (400, 100)])
def test_ddim_eta1_step_equals_ddpm_posterior(pair: tuple[int, int]) -> None:
    ab = make_alpha_bar("linear", 1000)
    a_t, a_p = ab[pair[0]].item(), ab[pair[1]].item()
    x0 = torch.randn(100, generator=_gen(15), dtype=F64)
    eps = torch.randn(100, generator=_gen(16), dtype=F64)
    xt = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps  # a consistent (x0_hat, eps_hat) pair
    mean_ddpm, std_ddpm = ddpm_posterior(xt, x0, a_t, a_p)
    mean_ddim, std_ddim = ddim_update(x0, eps, a_t, a_p, eta=1.0)
    assert torch.allclose(mean_ddim, mean_ddpm, atol=1e-10)
    assert std_ddim == pytest.approx(std_ddpm, rel=1e-9)
    _, std0 = ddim_update(x0, eps, a_t, a_p, eta=0.0)
    assert std0 == 0.0


# ----------------------------------------------------------------------------- exact denoiser

M, S = 0.5, 2.0  # data x0 ~ N(M, S²) elementwise


def _gaussian_denoiser(alpha_bar: torch.Tensor, m: float = M, s: float = S):
    """E[x0 | x_t] and E[ε | x_t] in closed form for x0 ~ N(m, s²)."""
    ab = alpha_bar.tolist()
    calls: list[int] = []

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(t, int)
        calls.append(t)
        a = ab[t]
        var_xt = a * s**2 + 1 - a
        r = x - math.sqrt(a) * m
        return m + math.sqrt(a) * s**2 / var_xt * r, math.sqrt(1 - a) / var_xt * r

    denoise.calls = calls  # type: ignore[attr-defined]
    return denoise


def _exact_x_T(alpha_bar: torch.Tensor, n: int = 4096) -> torch.Tensor:
    """Samples of the true marginal q(x_{T-1}), standardised so deterministic samplers (affine
    maps of x_T for this denoiser) report their discretisation error without Monte Carlo noise."""
    z = torch.randn(n, generator=_gen(17), dtype=F64)
    z = (z - z.mean()) / z.std()
    a = alpha_bar[-1].item()
    return math.sqrt(a) * M + math.sqrt(a * S**2 + 1 - a) * z


def _errors(x: torch.Tensor) -> tuple[float, float]:
    return abs(x.mean().item() - M), abs(x.std().item() / S - 1)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_recovers_gaussian_data(schedule: str) -> None:
    ab = make_alpha_bar(schedule, 1000)
    denoise = _gaussian_denoiser(ab)
    g = _gen(18)
    x_T = torch.randn(20_000, generator=g, dtype=F64)
    x = sample_ddpm(denoise, ab, x_T, generator=g)
    assert denoise.calls == list(range(999, -1, -1))
    mean_err, std_err = _errors(x)
    assert mean_err < 4 * S / math.sqrt(20_000) + 0.01  # Monte Carlo + tiny prior mismatch
    assert std_err < 0.03


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "linear"])  # those starting at T-1
def test_ddim_error_decreases_with_steps(schedule: str, spacing: str) -> None:
    ab = make_alpha_bar(schedule, 1000)
    x_T = _exact_x_T(ab)
    errs = []
    for steps in (5, 20, 100):
        x = sample_ddim(_gaussian_denoiser(ab), ab, x_T, steps=steps, spacing=spacing)
        mean_err, std_err = _errors(x)
        assert mean_err < 1e-6
        errs.append(std_err)
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] > 0.1  # 5 steps really is coarse, so the ordering above is meaningful
    assert errs[2] < 0.02


@pytest.mark.parametrize(("schedule", "tol"), [("linear", 0.02), ("cosine", 0.03)])
def test_dpm_solver_is_second_order(schedule: str, tol: float) -> None:
    """On its default grid DPM-Solver++(2M) beats DDIM at equal cost, one call per step."""
    ab = make_alpha_bar(schedule, 1000)
    x_T = _exact_x_T(ab)
    denoise = _gaussian_denoiser(ab)
    x = sample("dpm_solver", denoise, ab, x_T, steps=20)
    assert denoise.calls == timesteps(1000, 20, DEFAULT_SPACING["dpm_solver"])
    mean_err, std_err = _errors(x)
    assert mean_err < 1e-6 and std_err < tol
    ddim_err = _errors(sample("ddim", _gaussian_denoiser(ab), ab, x_T, steps=20))[1]
    assert std_err < ddim_err / 1.5
    x50 = sample("dpm_solver", _gaussian_denoiser(ab), ab, x_T, steps=50)
    assert _errors(x50)[1] < min(std_err, 0.01)


# ----------------------------------------------------------------------------- acceptance

SD = 0.4  # acceptance data: x0 ~ N(0, 0.4²), cosine schedule, T = 1000, x_T ~ N(0, I)


def _acceptance() -> tuple[torch.Tensor, object, torch.Tensor]:
    ab = make_alpha_bar("cosine", 1000)
    x_T = torch.randn(100_000, generator=_gen(30), dtype=F64)
    return ab, _gaussian_denoiser(ab, 0.0, SD), x_T


def test_dpm_solver_default_grid_recovers_the_std() -> None:
    """With the exact ε, DPM-Solver++(2M) on its default grid is within 2% of the data's std
    at 20 steps and never above it (a grid ending at t = 0 gave 0.533/0.534/0.454 at 5/10/20
    steps for 0.400: a huge last log-SNR step that over-disperses)."""
    ab, denoise, x_T = _acceptance()
    stds = {n: sample("dpm_solver", denoise, ab, x_T, steps=n).std().item() for n in (5, 10, 20)}
    assert all(std < SD for std in stds.values()), stds
    assert abs(stds[20] / SD - 1) < 0.02, stds


def test_ddim_default_grid_recovers_the_std() -> None:
    """DDIM (η = 0), first order, on its default grid: within 5% at 50 steps, from below."""
    ab, denoise, x_T = _acceptance()
    stds = {n: sample("ddim", denoise, ab, x_T, steps=n).std().item() for n in (5, 10, 20, 50)}
    assert all(std < SD for std in stds.values()), stds
    assert abs(stds[50] / SD - 1) < 0.05, stds


# ----------------------------------------------------------------------------- vs diffusers
# The same algorithm in diffusers 0.42, on the same grid, from the same x_T with the exact ε:
# diffusers' cosine ("squaredcos_cap_v2") is ours in float32, see
# test_cosine_schedule_is_diffusers_squaredcos_cap_v2.


def _diffusers_run(scheduler, model, x_T: torch.Tensor, steps: int, **step_kwargs) -> torch.Tensor:
    """diffusers' sampling loop: one ``scheduler.step`` per ``scheduler.timesteps``."""
    scheduler.set_timesteps(steps)
    x = x_T
    for t in scheduler.timesteps.tolist():
        x = scheduler.step(model(x, t), t, x, **step_kwargs).prev_sample
    return x


def _acceptance_small() -> tuple[torch.Tensor, object, torch.Tensor]:
    ab, denoise, _ = _acceptance()
    return ab, denoise, torch.randn(200, 100, generator=_gen(31), dtype=F64)


@NUMPY_2_WARNING
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])  # diffusers' default, ours
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_matches_diffusers(spacing: str, steps: int) -> None:
    """DPMSolverMultistepScheduler(dpmsolver++, order 2, lower_order_final, final σ = 0).
    With ε-prediction diffusers recovers x0 = (x - σε)/α in float32, which loses ~1e-3 at
    t = 999 (α ≈ 5e-5); fed x0 itself ("sample") it agrees to float32 rounding."""
    ab, denoise, x_T = _acceptance_small()
    ours = sample("dpm_solver", denoise, ab, x_T, steps=steps, spacing=spacing)
    for prediction_type, output, tol in (("epsilon", 1, 1e-3), ("sample", 0, 1e-5)):
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
            prediction_type=prediction_type, lower_order_final=True, final_sigmas_type="zero",
            timestep_spacing=spacing,
        )  # fmt: skip
        model = lambda x, t, i=output: denoise(x, t)[i]  # noqa: E731
        theirs = _diffusers_run(scheduler, model, x_T, steps)
        assert (theirs - ours).abs().max().item() < tol, prediction_type


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_ddim_matches_diffusers(spacing: str, steps: int) -> None:
    """DDIMScheduler(η = 0, set_alpha_to_one=True, no clipping); its step goes from t to
    t - T//steps, the next grid point for these steps."""
    ab, denoise, x_T = _acceptance_small()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
    )  # fmt: skip
    theirs = _diffusers_run(scheduler, lambda x, t: denoise(x, t)[1], x_T, steps, eta=0.0)
    ours = sample("ddim", denoise, ab, x_T, steps=steps, spacing=spacing)
    assert (theirs - ours).abs().max().item() < 1e-4


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 50])
def test_ddpm_matches_diffusers(spacing: str, steps: int) -> None:
    """DDPMScheduler(fixed_small variance, no clipping) with the same generator draws the same
    noise at each step (diffusers also draws, and scales by 0, at a last step with t > 0)."""
    ab, denoise, x_T = _acceptance_small()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
        variance_type="fixed_small", timestep_spacing=spacing,
    )  # fmt: skip
    model = lambda x, t: denoise(x, t)[1]  # noqa: E731
    theirs = _diffusers_run(scheduler, model, x_T, steps, generator=_gen(32))
    ours = sample("ddpm", denoise, ab, x_T, steps=steps, spacing=spacing, generator=_gen(32))
    assert (theirs - ours).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- sampler behaviour


def _toy(T: int = 50) -> tuple[torch.Tensor, object, torch.Tensor]:
    ab = make_alpha_bar("linear", T)
    return ab, _gaussian_denoiser(ab), torch.randn(8, 3, 6, generator=_gen(19), dtype=F64)


@pytest.mark.parametrize("steps", [None, 50, 10])
def test_ddpm_chain_equals_ddim_eta1_chain(steps: int | None) -> None:
    ab, denoise, x_T = _toy()
    x_ddpm = sample_ddpm(denoise, ab, x_T, steps=steps, generator=_gen(20))
    x_ddim = sample_ddim(denoise, ab, x_T, steps=steps, eta=1.0, generator=_gen(20))
    assert torch.allclose(x_ddpm, x_ddim, atol=1e-10)


@pytest.mark.parametrize(("name", "kwargs"), [("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_generator_reproducibility(name: str, kwargs: dict) -> None:
    ab, denoise, x_T = _toy()
    a = sample(name, denoise, ab, x_T, steps=10, generator=_gen(21), **kwargs)
    b = sample(name, denoise, ab, x_T, steps=10, generator=_gen(21), **kwargs)
    c = sample(name, denoise, ab, x_T, steps=10, generator=_gen(22), **kwargs)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("name", "kwargs"), [("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_a_noise_function_feeds_the_stochastic_steps(name: str, kwargs: dict) -> None:
    """``generator`` may be a function x -> noise: a generator's own draws, passed through it,
    give the generator's result, at one draw per step but the last."""
    ab, denoise, x_T = _toy()
    g, calls = _gen(21), []

    def noise(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.randn(x.shape, generator=g, dtype=x.dtype)

    assert torch.equal(
        sample(name, denoise, ab, x_T, steps=10, generator=noise, **kwargs),
        sample(name, denoise, ab, x_T, steps=10, generator=_gen(21), **kwargs),
    )
    assert calls == [x_T.shape] * 9
    assert draws_noise(name, **kwargs) and not draws_noise("ddim") and not draws_noise("dpm_solver")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_shapes_dtype_and_default_grid(name: str) -> None:
    ab = make_alpha_bar("cosine", 100)
    denoise = _gaussian_denoiser(ab)
    x_T = torch.randn(2, 3, 4, generator=_gen(23))
    out = sample(name, denoise, ab, x_T, steps=7, spacing=None, generator=_gen(24))
    assert out.shape == x_T.shape and out.dtype == torch.float32
    assert denoise.calls == timesteps(100, 7, DEFAULT_SPACING[name])
    direct = _gaussian_denoiser(ab)  # the sampler's own default is the same grid
    get_sampler(name)(direct, ab, x_T, steps=7)
    assert direct.calls == denoise.calls
    # A single step lands on x0_hat at t = T-1.
    one = sample(name, _gaussian_denoiser(ab), ab, x_T, steps=1, generator=_gen(24))
    assert torch.allclose(one, _gaussian_denoiser(ab)(x_T, 99)[0])


def test_sample_passes_the_options_through() -> None:
    ab, denoise, x_T = _toy()
    for name, options in [
        ("ddpm", {"steps": 10, "spacing": "leading", "generator": _gen(25)}),
        ("ddim", {"steps": 10, "spacing": "linspace", "eta": 0.5, "generator": _gen(25)}),
        ("dpm_solver", {"steps": 10, "spacing": "linear"}),
    ]:
        expected = get_sampler(name)(denoise, ab, x_T, **options)
        options["generator"] = _gen(25)
        assert torch.equal(sample(name, denoise, ab, x_T, **options), expected), name


def test_deterministic_samplers_ignore_generator() -> None:
    ab, denoise, x_T = _toy()
    for name in ("dpm_solver", "ddim"):
        a = sample(name, denoise, ab, x_T, steps=10, generator=_gen(1))
        b = sample(name, denoise, ab, x_T, steps=10, generator=_gen(2))
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- sampler errors


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_misspelt_keyword_is_a_type_error(name: str) -> None:
    ab, denoise, x_T = _toy()
    with pytest.raises(TypeError, match="stpes"):
        get_sampler(name)(denoise, ab, x_T, stpes=10)
    with pytest.raises(TypeError, match="spacnig"):
        sample(name, denoise, ab, x_T, spacnig="trailing")  # type: ignore[call-arg]


def test_unknown_sampler_or_spacing_raises() -> None:
    ab, denoise, x_T = _toy()
    with pytest.raises(ValueError, match="'euler'.*ddpm.*ddim.*dpm_solver"):
        get_sampler("euler")
    with pytest.raises(ValueError, match="'euler'.*ddpm.*ddim.*dpm_solver"):
        sample("euler", denoise, ab, x_T)
    for name in SAMPLERS:
        with pytest.raises(ValueError, match="'uniform'.*trailing.*linspace.*leading.*linear"):
            sample(name, denoise, ab, x_T, steps=5, spacing="uniform")
    assert get_sampler("dpm_solver") is sample_dpmpp_2m


@pytest.mark.parametrize("name", ["ddpm", "dpm_solver"])
def test_eta_is_for_ddim_only(name: str) -> None:
    ab, denoise, x_T = _toy()
    with pytest.raises(ValueError, match=f"eta=0.5 applies to 'ddim' only.*'{name}'"):
        sample(name, denoise, ab, x_T, steps=5, eta=0.5)
    sample(name, denoise, ab, x_T, steps=5, eta=0.0)  # the common default is fine
    with pytest.raises(TypeError, match="eta"):
        get_sampler(name)(denoise, ab, x_T, steps=5, eta=0.0)


@pytest.mark.parametrize(
    ("steps", "spacing"), [(0, None), (51, None), (-1, "leading"), (50, "linspace")]
)
def test_sample_rejects_bad_steps(steps: int, spacing: str | None) -> None:
    ab, denoise, x_T = _toy()  # T = 50
    for name in SAMPLERS:
        with pytest.raises(ValueError, match="steps must be an integer from 1 to (50|49) for T=50"):
            sample(name, denoise, ab, x_T, steps=steps, spacing=spacing)
