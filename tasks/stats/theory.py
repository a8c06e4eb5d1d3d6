"""The quantization model's relations as data: a measured exponent against its prediction, with both intervals."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from schemas.jsonable import jsonable
from tasks.stats.inputs import FitError, check_level
from tasks.stats.intervals import percentile_ci
from tasks.stats.ols import LogLogFit
from tasks.stats.powerlaw import DerivedValue, PowerLawFit


@dataclass
class TheoryCheck:
    """One comparison of a measured quantity with a theory prediction.

    ``consistent``: the two intervals overlap, or (``predicted_ci`` None) the prediction lies
    inside ``measured_ci``. False when the measured interval is not finite.
    """

    name: str
    measured: float
    measured_ci: list[float]
    predicted: float
    predicted_ci: list[float] | None
    consistent: bool
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "name": self.name,
            "measured": self.measured,
            "measured_ci": self.measured_ci,
            "predicted": self.predicted,
            "predicted_ci": self.predicted_ci,
            "consistent": bool(self.consistent),
            "level": float(self.level),
        })


def theory_check(
    name: str,
    measured: float,
    measured_ci: Sequence[float],
    predicted: float,
    predicted_ci: Sequence[float] | None = None,
    level: float = 0.95,
) -> TheoryCheck:
    """Build a :class:`TheoryCheck`; intervals are [lo, hi] (given in either order)."""
    mci = sorted(float(v) for v in measured_ci)
    pci = None if predicted_ci is None else sorted(float(v) for v in predicted_ci)
    if not all(math.isfinite(v) for v in mci):
        ok = False
    elif pci is None:
        ok = mci[0] <= float(predicted) <= mci[1]
    elif not all(math.isfinite(v) for v in pci):
        ok = mci[0] <= float(predicted) <= mci[1]
    else:
        ok = max(mci[0], pci[0]) <= min(mci[1], pci[1])
    return TheoryCheck(name, float(measured), mci, float(predicted), pci, bool(ok), float(level))


@dataclass
class ExponentEstimate:
    """A scalar estimate with an optional interval and optional bootstrap samples (shape (m,))."""

    value: float
    ci: list[float] | None = None
    samples: np.ndarray | None = field(default=None, repr=False)


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
        return ExponentEstimate(obj.params[param], list(obj.ci[param]), s if s.size else None)
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
    """(value, ci) of fn(estimate): bootstrap distribution when present, else the CI endpoints
    mapped through fn (valid because every map used here is monotone)."""
    value = float(fn(np.asarray(est.value)))
    if est.samples is not None and len(est.samples) >= 2:
        return value, percentile_ci(fn(np.asarray(est.samples, dtype=float)), level)
    if est.ci is None:
        return value, None
    ends = sorted(float(fn(np.asarray(v))) for v in est.ci)
    return value, ends


def _measured(est: ExponentEstimate) -> list[float]:
    return list(est.ci) if est.ci is not None else [est.value, est.value]


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
    The predicted interval comes from the bootstrap distribution of the input exponent when
    available, else from its CI endpoints pushed through the (monotone) map.
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
        pv, pci = _transform(src, fn, level)
        checks.append(theory_check(name, meas.value, _measured(meas), pv, pci, level))

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
