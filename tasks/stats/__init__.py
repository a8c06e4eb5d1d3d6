"""Pure statistics for scaling laws (numpy/scipy in, plain results out; nothing of Prefect or the store).

- `powerlaw`: L = E + A x^-a and the Chinchilla form, Huber loss on log residuals, L-BFGS (`huber`: the objective,
  the screened multistart), intervals (`uncertainty`: expanded-percentile bootstrap, or the asymptotic sandwich for
  large tables; `intervals`: percentile, BCa, MOVER) and warnings (`diagnostics`);
- `ols`: the paper's log-log least squares; `zipf`: rank-frequency slopes and the discrete power-law MLE;
- `theory`: the quantization model's relations (alpha_N, alpha/(alpha+1), Zipf slope) as checks: two-sided tests
  with a stated rule (`describe_rule`).
"""
from tasks.stats.inputs import FitError
from tasks.stats.ols import LogLogFit, fit_loglog_ols
from tasks.stats.powerlaw import DerivedValue, PowerLawFit, fit_chinchilla, fit_power_law
from tasks.stats.theory import ExponentEstimate, TheoryCheck, as_exponent, scaling_theory_checks, theory_check
from tasks.stats.zipf import DiscretePowerLawFit, fit_discrete_powerlaw, rank_frequency_slope

__all__ = [
    "FitError", "PowerLawFit", "DerivedValue", "LogLogFit", "DiscretePowerLawFit", "TheoryCheck",
    "ExponentEstimate", "fit_power_law", "fit_chinchilla", "fit_loglog_ols", "rank_frequency_slope",
    "fit_discrete_powerlaw", "theory_check", "as_exponent", "scaling_theory_checks",
]
