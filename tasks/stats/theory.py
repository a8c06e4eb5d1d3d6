"""The quantization model's relations as data: a measured exponent against its prediction, with both intervals."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from schemas.jsonable import jsonable
from tasks.stats.inputs import FitError, check_level
from tasks.stats.intervals import mover_difference_ci, percentile_ci
from tasks.stats.ols import LogLogFit
from tasks.stats.powerlaw import DerivedValue, PowerLawFit


RULE_CONTAINS = "ci-contains"
RULE_BOOTSTRAP_DIFFERENCE = "bootstrap-difference"
RULE_INTERVAL_DIFFERENCE = "interval-difference"
RULE_NO_INTERVAL = "no-interval"

RULES = {
    RULE_CONTAINS: "consistent iff the predicted constant lies inside the measured {level} interval",
    RULE_BOOTSTRAP_DIFFERENCE: "consistent iff 0 lies inside the {level} percentile interval of measured - predicted "
                               "over independent bootstrap resamples of the two fits",
    RULE_INTERVAL_DIFFERENCE: "consistent iff 0 lies inside the {level} interval of measured - predicted built from "
                              "the two {level} intervals of independent fits (MOVER, Zou & Donner 2008)",
    RULE_NO_INTERVAL: "not consistent: the measured value has no finite interval",
}
MIN_DIFFERENCE_SAMPLES = 20  # fewer bootstrap samples on a side: use the intervals (MOVER)


def describe_rule(rule: str, level: float | None = 0.95) -> str:
    """The rule's sentence, e.g. for report text (``level`` None: stated without the number)."""
    if level is None:
        return RULES[rule].format(level="confidence")
    test = "" if rule == RULE_NO_INTERVAL else f" (a two-sided test at {round(1.0 - level, 6):g})"
    return RULES[rule].format(level=f"{level:.0%}") + test


@dataclass
class TheoryCheck:
    """One comparison of a measured quantity with a theory prediction, as a two-sided test at 1 - ``level``.

    ``rule`` says how ``consistent`` was decided (see :data:`RULES` and :func:`describe_rule`):
    ``ci-contains`` (the prediction is a constant: it lies inside ``measured_ci``),
    ``bootstrap-difference`` (both sides measured, with bootstrap samples: 0 lies inside the
    percentile interval of the difference of independent resamples), ``interval-difference``
    (both sides measured, intervals only: 0 lies inside the MOVER interval of the difference),
    ``no-interval`` (the measured interval is not finite: not consistent). ``difference`` =
    measured - predicted, ``difference_ci`` its interval (None for ``ci-contains``).
    Overlapping 95% intervals, the earlier rule, amount to a test at about 0.6%, not 5%.
    """

    name: str
    measured: float
    measured_ci: list[float]
    predicted: float
    predicted_ci: list[float] | None
    consistent: bool
    level: float = 0.95
    rule: str = RULE_CONTAINS
    difference: float = math.nan
    difference_ci: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def _finite(values) -> bool:
    return values is not None and all(math.isfinite(v) for v in values)


def _usable(samples) -> np.ndarray | None:
    if samples is None:
        return None
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    return s if s.size >= MIN_DIFFERENCE_SAMPLES else None


def theory_check(
    name: str,
    measured: float,
    measured_ci: Sequence[float],
    predicted: float,
    predicted_ci: Sequence[float] | None = None,
    level: float = 0.95,
    *,
    measured_samples: np.ndarray | None = None,
    predicted_samples: np.ndarray | None = None,
    seed: int = 0,
) -> TheoryCheck:
    """Build a :class:`TheoryCheck`; intervals are [lo, hi] (given in either order), at ``level``.

    A prediction without a (finite) interval is a constant: rule ``ci-contains``. A measured prediction (with an
    interval) is a second, independent estimate: with at least MIN_DIFFERENCE_SAMPLES bootstrap samples on each side
    (``measured_samples``, ``predicted_samples``: shape (m,), e.g. ``PowerLawFit.samples_of`` or a derived value's
    samples) the rule is ``bootstrap-difference`` — the samples are paired after a random permutation of one side
    (``seed``), so the pairs are draws from the two independent bootstrap distributions even when both fits used the
    same resampling seed; otherwise ``interval-difference`` (MOVER).
    """
    mci = sorted(float(v) for v in measured_ci)
    pci = None if predicted_ci is None else sorted(float(v) for v in predicted_ci)
    measured, predicted = float(measured), float(predicted)
    diff = measured - predicted
    if not _finite(mci):
        return TheoryCheck(name, measured, mci, predicted, pci, False, float(level), RULE_NO_INTERVAL, diff)
    if not _finite(pci):
        ok = mci[0] <= predicted <= mci[1]
        return TheoryCheck(name, measured, mci, predicted, pci, bool(ok), float(level), RULE_CONTAINS, diff)
    ms, ps = _usable(measured_samples), _usable(predicted_samples)
    if ms is not None and ps is not None:
        k = min(ms.size, ps.size)
        ps = np.random.default_rng(seed).permutation(ps)
        dci = percentile_ci(ms[:k] - ps[:k], level)
        rule = RULE_BOOTSTRAP_DIFFERENCE
    else:
        dci = mover_difference_ci(measured, mci, predicted, pci)
        rule = RULE_INTERVAL_DIFFERENCE
    ok = dci[0] <= 0.0 <= dci[1]
    return TheoryCheck(name, measured, mci, predicted, pci, bool(ok), float(level), rule, diff, dci)


@dataclass
class ExponentEstimate:
    """A scalar estimate with an optional interval and optional bootstrap samples (shape (m,)); ``fit`` and
    ``param`` when it is a parameter of a :class:`PowerLawFit` (functions of it then get intervals by the fit's own
    method, e.g. BCa)."""

    value: float
    ci: list[float] | None = None
    samples: np.ndarray | None = field(default=None, repr=False)
    fit: PowerLawFit | None = field(default=None, repr=False)
    param: str = "a"


def as_exponent(obj: Any, param: str = "a") -> ExponentEstimate:
    """Normalise an exponent estimate for :func:`scaling_theory_checks`.

    Accepts a :class:`PowerLawFit` (takes ``params[param]``, its CI and bootstrap samples), a
    :class:`LogLogFit` (the exponent ``-slope``, CI flipped), a :class:`DerivedValue`, an
    :class:`ExponentEstimate`, a tuple ``(value, (lo, hi))`` or ``(value, lo, hi)``, or a number
    (no interval).
    """
    if isinstance(obj, ExponentEstimate):
        return obj
    if isinstance(obj, PowerLawFit):
        s = obj.samples_of(param)
        return ExponentEstimate(obj.params[param], list(obj.ci[param]), s if s.size else None, obj, param)
    if isinstance(obj, LogLogFit):
        return ExponentEstimate(-obj.slope, sorted([-obj.ci[0], -obj.ci[1]]), None)
    if isinstance(obj, DerivedValue):
        return ExponentEstimate(obj.value, list(obj.ci), obj.samples if obj.samples.size else None)
    if isinstance(obj, (tuple, list)):
        if len(obj) == 2:
            return ExponentEstimate(float(obj[0]), [float(obj[1][0]), float(obj[1][1])])
        if len(obj) == 3:
            return ExponentEstimate(float(obj[0]), [float(obj[1]), float(obj[2])])
        raise FitError(f"an exponent tuple must be (value, (lo, hi)) or (value, lo, hi); got {obj!r}")
    if isinstance(obj, (int, float, np.floating, np.integer)):
        return ExponentEstimate(float(obj))
    raise FitError(f"cannot read an exponent estimate from {type(obj).__name__}")


def _transform(est: ExponentEstimate, fn: Callable[[np.ndarray], np.ndarray], level: float):
    """(value, ci, samples) of fn(estimate): from the fit (its interval method) or the bootstrap samples when
    present, else the CI endpoints mapped through fn (valid because every map used here is monotone)."""
    value = float(fn(np.asarray(est.value)))
    if est.fit is not None and est.samples is not None:
        dv = est.fit.derived(lambda p: float(fn(np.asarray(p[est.param]))), level)
        return value, dv.ci, dv.samples
    if est.samples is not None and len(est.samples) >= 2:
        samples = fn(np.asarray(est.samples, dtype=float))
        return value, percentile_ci(samples, level), samples
    if est.ci is None:
        return value, None, None
    return value, sorted(float(fn(np.asarray(v))) for v in est.ci), None


def _measured(est: ExponentEstimate) -> list[float]:
    return list(est.ci) if est.ci is not None else [math.nan, math.nan]


def scaling_theory_checks(
    *,
    alpha_n: Any = None,
    alpha_d: Any = None,
    alpha_s: Any = None,
    alpha: Any = None,
    zipf_slope: Any = None,
    level: float = 0.95,
) -> list[TheoryCheck]:
    """The quantization model's relations, as checks for whichever inputs are given.

    alpha is the paper's α (frequencies p_k ∝ k^-(α+1)); inputs are anything
    :func:`as_exponent` accepts (``zipf_slope``: a signed slope — a :class:`LogLogFit` from
    :func:`rank_frequency_slope` or a (value, ci) tuple — not an exponent).

    Checks produced (when their inputs are present):
    - ``alpha_D vs alpha_N/(alpha_N+1)``, ``alpha_S vs alpha_N/(alpha_N+1)``
    - ``alpha_N vs alpha``, ``alpha_D vs alpha/(alpha+1)``, ``alpha_S vs alpha/(alpha+1)``
    - ``zipf_slope vs -(alpha_N+1)``, ``zipf_slope vs -(alpha+1)``
    The predicted value is the map of the input: a constant when the input is one (``alpha`` as a
    number: rule ``ci-contains``), else a measured estimate whose interval comes from the input's
    bootstrap distribution when available, or from its CI endpoints pushed through the (monotone)
    map; the two measured sides are then compared through their difference (rules
    ``bootstrap-difference`` when both have samples, else ``interval-difference``; see
    :class:`TheoryCheck`). The inputs must come from independent fits.
    """
    level = check_level(level)
    ratio = lambda a: a / (a + 1.0)  # noqa: E731
    checks: list[TheoryCheck] = []
    an = None if alpha_n is None else as_exponent(alpha_n)
    ad = None if alpha_d is None else as_exponent(alpha_d)
    as_ = None if alpha_s is None else as_exponent(alpha_s)
    al = None if alpha is None else as_exponent(alpha)
    zs = None
    if zipf_slope is not None:
        if isinstance(zipf_slope, LogLogFit):
            zs = ExponentEstimate(zipf_slope.slope, list(zipf_slope.ci))
        else:
            zs = as_exponent(zipf_slope)

    def add(name, meas, src, fn):
        pv, pci, psamples = _transform(src, fn, level)
        checks.append(theory_check(name, meas.value, _measured(meas), pv, pci, level,
                                   measured_samples=meas.samples, predicted_samples=psamples))

    if an is not None:
        if ad is not None:
            add("alpha_D vs alpha_N/(alpha_N+1)", ad, an, ratio)
        if as_ is not None:
            add("alpha_S vs alpha_N/(alpha_N+1)", as_, an, ratio)
    if al is not None:
        if an is not None:
            add("alpha_N vs alpha", an, al, lambda a: a)
        if ad is not None:
            add("alpha_D vs alpha/(alpha+1)", ad, al, ratio)
        if as_ is not None:
            add("alpha_S vs alpha/(alpha+1)", as_, al, ratio)
    if zs is not None:
        if an is not None:
            add("zipf_slope vs -(alpha_N+1)", zs, an, lambda a: -(a + 1.0))
        if al is not None:
            add("zipf_slope vs -(alpha+1)", zs, al, lambda a: -(a + 1.0))
    return checks
