"""Iterative curvature estimates agree with the exact Hessian on a small model (reproduction 4
of issue 9): Lanczos eigenvalues, Hutchinson's trace and the SLQ density against
``hessian_exact`` (d = 310, float64), with power iteration's cost and error beside Lanczos'.

- eigenvalues: each of Lanczos' 5 top and 5 bottom values within ``REL`` = 1e-4 relative of
  the matching exact eigenvalue (the 5 largest / smallest of ``torch.linalg.eigvalsh``), and
  all converged.
- trace: Hutchinson's estimate within ``K`` = 3 standard errors of the exact trace (a
  two-sided 3σ band: a correct unbiased estimator fails it with probability ≈ 0.3%).
- density: the SLQ measure's mass in the window (t_lo, t_hi) — t_hi the midpoint of the
  widest gap between consecutive exact eigenvalues among the top 20, t_lo the same among the
  bottom 20, so no eigenvalue lies near the window's edges — against the exact fraction
  #{t_lo < λ_i < t_hi}/d: within K standard errors (over the probes) plus 1e-3 (Gauss
  quadrature places nodes only approximately inside the gaps); and the broadened density
  integrates to 1 within 1e-3.
- power iteration: it finds the values of largest magnitude (the trained 64-4-10 net is not
  at a minimum: |λ_min| > λ_max), so its values are compared with the exact eigenvalues
  sorted by |λ|; reported (products, relative error of each value), not asserted beyond
  being finite — the issue asks for it side by side.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

REL = 1e-4
K = 3.0


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def check(result: dict) -> Finding:
    (run,) = runs_of(result)
    res = run["stages"]["curvature"]["results"]
    exact, lz, pw = res["hessian_exact"], res["hessian_eigs"], res["hessian_eigs_2"]
    tr, dens = res["hessian_trace"], res["hessian_density"]
    ev = exact["eigenvalues"]  # ascending, all d
    d = len(ev)

    top = [v for v, w in zip(lz["eigenvalues"], lz["which"]) if w == "top"]
    bottom = [v for v, w in zip(lz["eigenvalues"], lz["which"]) if w == "bottom"]
    ref = ev[::-1][: len(top)] + ev[: len(bottom)]
    errs = [abs(a - b) / abs(b) for a, b in zip(top + bottom, ref)]
    eig_ok = lz["all_converged"] and max(errs) <= REL and len(errs) == 10

    trace_ok = abs(tr["trace"] - exact["trace"]) <= K * tr["trace_se"]

    desc, asc = ev[::-1][:21], ev[:21]
    j = max(range(20), key=lambda i: desc[i] - desc[i + 1])
    t_hi = 0.5 * (desc[j] + desc[j + 1])
    j = max(range(20), key=lambda i: asc[i + 1] - asc[i])
    t_lo = 0.5 * (asc[j] + asc[j + 1])
    inside = sum(t_lo < v < t_hi for v in ev)
    true_mass = inside / d
    per_probe = [sum(w for x, w in zip(ns, ws) if t_lo < x < t_hi) for ns, ws in zip(dens["nodes"], dens["weights"])]
    mass, se = _mean_se(per_probe)
    mass_ok = abs(mass - true_mass) <= K * se + 1e-3 and abs(dens["mass"] - 1.0) <= 1e-3

    by_magnitude = sorted(ev, key=abs, reverse=True)
    perr = [abs(a - b) / abs(b) for a, b in zip(pw["eigenvalues"], by_magnitude)]
    power_ok = all(math.isfinite(e) for e in perr)
    holds = eig_ok and trace_ok and mass_ok and power_ok
    return Finding(holds, (
        f"d = {d}; Lanczos: 5 top + 5 bottom in {lz['n_hvps']} HVPs, max relative error {max(errs):.1e} "
        f"(λ_max {top[0]:.6g} vs exact {ev[-1]:.6g}); power iteration: top 3 in {pw['n_hvps']} HVPs, "
        f"values {', '.join(f'{v:.6g}' for v in pw['eigenvalues'])}, relative errors "
        f"{', '.join(f'{e:.1e}' for e in perr)} (converged {pw['converged']}); "
        f"Hutchinson trace {tr['trace']:.4g} ± {tr['trace_se']:.2g} vs exact {exact['trace']:.4g} "
        f"({abs(tr['trace'] - exact['trace']) / tr['trace_se']:.1f} SE); SLQ mass in ({t_lo:.3g}, {t_hi:.3g}) "
        f"{mass:.4f} ± {se:.1g} vs exact {true_mass:.4f} ({inside}/{d}); density integral "
        f"{dens['mass']:.5f}"))


CLAIM = Claim(
    name="iterative_vs_exact",
    claim="On a small model the iterative curvature methods agree with the exact Hessian: Lanczos' extreme "
    "eigenvalues to 1e-4 relative, Hutchinson's trace and the SLQ density's mass within 3 standard errors.",
    source="Golub & Van Loan §10.1 (Lanczos); Hutchinson 1989; Ubaru, Chen & Saad 2017 and Ghorbani, Krishnan & "
    "Xiao 2019 (SLQ); Yao et al. 2020 (PyHessian, power iteration)",
    check=check,
)
