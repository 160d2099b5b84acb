"""Fit the polynomial of fastloss_log1pf_unit (csrc/fastmath.h) and print its error.

log1p(u) = 2 t P(t**2) with t = u / (u + 2), so for u in [0, 1] the polynomial needs
P(s) = atanh(sqrt(s)) / sqrt(s) on s in [0, 1/9]. P(s) = 1 + s Q(s) keeps the leading
term exact; Q (degree 3) is fitted by weighted least squares on Chebyshev nodes,
reweighted toward the largest relative errors (Lawson's iteration, which tends to the
minimax fit), and its coefficients rounded to float32 before the error is measured.

    python tests/tools/fit_log1pf.py
"""
import numpy as np

S_MAX = 1.0 / 9.0
DEGREE = 4  # of Q's coefficient count: P has DEGREE + 1 terms


def target(s):
    t = np.sqrt(s)
    out = np.ones_like(s)
    positive = t > 0
    out[positive] = np.arctanh(t[positive]) / t[positive]
    return out


def fit(degree=DEGREE, iterations=60):
    s = (1 - np.cos(np.linspace(0, np.pi, 4000))) / 2 * S_MAX
    s = s[s > 0]
    design = np.vander(s, degree, increasing=True) * (s / target(s))[:, None]
    goal = (target(s) - 1) / target(s)  # relative error of 1 + s Q(s)
    weight = np.ones_like(s)
    for _ in range(iterations):
        root = np.sqrt(weight)
        coefficients, *_ = np.linalg.lstsq(design * root[:, None], goal * root, rcond=None)
        error = np.abs(design @ coefficients - goal)
        weight *= (error / error.max()) ** 0.3 + 1e-12
        weight /= weight.sum()
    return np.float32(coefficients)


def main():
    coefficients = fit()
    s = np.linspace(0, S_MAX, 200001)
    p = 1 + s * np.polyval(coefficients[::-1].astype(np.float64), s)
    error = np.abs(p - target(s)) / target(s)
    for index, value in enumerate(coefficients, 1):
        print(f"s**{index}: {value!r}  ({float(value).hex()})")
    print(f"max relative error of P on [0, 1/9]: {error.max():.3g}")


if __name__ == "__main__":
    main()
