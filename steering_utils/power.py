"""Every claim with its power: a verdict per comparison, shown or not shown at this n.

A comparison of two arms on the same units (prompts, capability items) reduces to one
difference per unit. Its verdict states the mean difference with a percentile-bootstrap
95% CI and says one of two things:

- **shown**: the CI excludes zero on the side the claim expects;
- **not shown**, with the *minimum detectable effect* (MDE): the smallest true mean
  difference this n would show with 80% power in a two-sided 5% test,
  MDE = (z_0.975 + z_0.80) * sd / sqrt(n) ~= 2.80 * sd / sqrt(n)
  (the normal approximation of the paired t-test; sd is the per-unit difference's
  standard deviation).

A check against a limit (a capability drop of at most 5 points, a perplexity rise of at
most 25%) is *decidable* only when its MDE is below the limit, or its CI already lies
wholly on one side of the limit: a "no loss shown" with an MDE of 15 points and a CI
spanning the 5-point limit says nothing about that limit, and the verdict says so.

A rank among null directions (`rank_verdict`) has no interval: it is shown when its
empirical p-value is below 0.05, and decidable only when the null is large enough for any
rank to get there (the smallest p it allows, 1/(N+1), below 0.05: N >= 20).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

LEVEL = 0.95  # two-sided confidence of every interval
POWER = 0.80  # the power an MDE is quoted at
Expect = Literal["lower", "higher", "either"]


def mde_factor(level: float = LEVEL, power: float = POWER) -> float:
    """z_(1 - (1 - level)/2) + z_power: 2.80 at the defaults."""
    return float(stats.norm.ppf(1 - (1 - level) / 2) + stats.norm.ppf(power))


def minimum_detectable_effect(sd: float, n: int, level: float = LEVEL,
                              power: float = POWER) -> float | None:
    """Smallest true mean difference a paired test on n units detects with `power`."""
    if n < 2 or sd is None or not math.isfinite(sd):
        return None
    return mde_factor(level, power) * float(sd) / math.sqrt(n)


def units_needed(sd: float, effect: float, level: float = LEVEL,
                 power: float = POWER) -> int | None:
    """Units (prompts, items) a paired test needs to detect `effect` with `power`."""
    if not effect or sd is None or not math.isfinite(sd):
        return None
    return int(math.ceil((mde_factor(level, power) * float(sd) / abs(effect)) ** 2))


def draw_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The (n_boot, n) resample indices of a percentile bootstrap over n units: every
    interval of the study draws them here, so the same seed means the same resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(boot: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the two-sided percentile interval of bootstrap statistics."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return float(lo), float(hi)


class Verdict(BaseModel):
    """One comparison's estimate, interval and verdict (differences: first arm - second)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    claim: str = Field(description="what is compared, e.g. 'CAA vs unsteered (eval)'")
    name: str | None = Field(None, description="a stable key for readers (e.g. 'toxicity', "
                                               "'control'); null: unnamed")
    metric: str = Field(description="the per-unit quantity differenced, e.g. 'mean toxicity'")
    expect: Expect = Field(description="the side of zero the claim expects")
    estimate: float | None
    ci_lo: float | None
    ci_hi: float | None
    n: int = Field(ge=0, description="paired units")
    unit: str = Field(description="what n counts: prompts, items")
    sd: float | None = Field(description="standard deviation of the per-unit difference")
    mde: float | None = Field(description="minimum detectable effect at 80% power, this n")
    shown: bool | None = Field(description="CI excludes 0 on the expected side; null: no data")
    limit: float | None = Field(None, description="the limit a check compares with, if any "
                                                  "(a rank: the significance level)")
    decidable: bool | None = Field(None, description="MDE <= |limit| or the CI clear of "
                                                     "the limit: this n can see the limit "
                                                     "being crossed (a rank: the null allows "
                                                     "p below the level)")
    p_value: float | None = Field(None, description="a rank's empirical p-value")
    rank: int | None = Field(None, ge=1, description="a rank among n null members + itself")
    min_p: float | None = Field(None, description="the smallest p a null of n allows: 1/(n+1)")
    summary: str


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def _summary(v: Verdict, digits: int) -> str:
    if v.n == 0 or v.estimate is None:
        return f"{v.claim}: no paired {v.unit}"
    head = (f"{v.claim}: {v.metric} {_fmt(v.estimate, digits)} "
            f"[{_fmt(v.ci_lo, digits)}, {_fmt(v.ci_hi, digits)}], n = {v.n} {v.unit}")
    if v.shown:
        text = f"shown. {head}"
    else:
        mde = "undefined" if v.mde is None else f"{v.mde:.{digits}f}"
        text = f"not shown. {head}; smallest effect this n detects (80% power): {mde}"
    if v.limit is not None and v.decidable is False:
        text += f"; too few {v.unit} to decide the limit {v.limit:g}"
    return text


def _shown(lo: float, hi: float, expect: Expect) -> bool:
    if expect == "lower":
        return hi < 0
    if expect == "higher":
        return lo > 0
    return hi < 0 or lo > 0


def _clear_of_limit(lo: float, hi: float, limit: float) -> bool:
    """The CI lies wholly on one side of +|limit| and of -|limit|: whatever the power, the
    data already say which side of the limit the effect is on."""
    bound = abs(limit)
    return not (lo <= bound <= hi) and not (lo <= -bound <= hi)


def verdict(claim: str, metric: str, differences, unit: str = "prompts",
            expect: Expect = "lower", n_boot: int = 1000, seed: int = 0,
            limit: float | None = None, digits: int = 3) -> Verdict:
    """The verdict on per-unit `differences` (NaNs dropped; the count dropped is not n)."""
    d = np.asarray(differences, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        v = Verdict(claim=claim, metric=metric, expect=expect, estimate=None, ci_lo=None,
                    ci_hi=None, n=0, unit=unit, sd=None, mde=None, shown=None, limit=limit,
                    decidable=None if limit is None else False, summary="")
        return v.model_copy(update={"summary": _summary(v, digits)})
    lo, hi = percentile_interval(d[draw_indices(n, n_boot, seed)].mean(axis=1))
    sd = float(d.std(ddof=1)) if n > 1 else None
    mde = minimum_detectable_effect(sd, n) if sd is not None else None
    decidable = None if limit is None else bool(
        (mde is not None and mde <= abs(limit)) or _clear_of_limit(lo, hi, limit))
    v = Verdict(claim=claim, metric=metric, expect=expect, estimate=float(d.mean()),
                ci_lo=lo, ci_hi=hi, n=n, unit=unit, sd=sd, mde=mde,
                shown=_shown(lo, hi, expect), limit=limit, decidable=decidable, summary="")
    return v.model_copy(update={"summary": _summary(v, digits)})


def rank_verdict(claim: str, metric: str, estimate: float, rank: int, n_null: int,
                 p_value: float, null_sd: float | None = None, null_q05: float | None = None,
                 level: float = 1 - LEVEL, digits: int = 3) -> Verdict:
    """The verdict on an effect ranked among `n_null` null members (`rank` 1: strongest):
    shown when p < `level`; else the rank, the smallest p the null allows and, where given,
    the null's 5% quantile (the effect it would take to be shown)."""
    min_p = 1.0 / (n_null + 1)
    shown = bool(p_value < level)
    head = (f"{claim}: {metric} {_fmt(estimate, digits)}, rank {rank} of {n_null + 1}, "
            f"p = {p_value:.3g}")
    if shown:
        text = f"shown. {head}"
    else:
        text = f"not shown. {head}; smallest p this null allows: {min_p:.3g}"
        if min_p >= level:
            text += f" (too few null directions to show it at p < {level:g})"
        elif null_q05 is not None:
            text += f"; shown would take {metric} <= {_fmt(null_q05, digits)} (the null's 5%)"
    return Verdict(claim=claim, metric=metric, expect="lower", estimate=float(estimate),
                   ci_lo=None, ci_hi=None, n=int(n_null), unit="null directions", sd=null_sd,
                   mde=None, shown=shown, limit=level, decidable=min_p < level,
                   p_value=float(p_value), rank=int(rank), min_p=min_p, summary=text)
