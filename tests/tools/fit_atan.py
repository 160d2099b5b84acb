"""The coefficients of fastloss_atan's polynomial (csrc/fastmath.h).

atan t = t + t**3 P(t**2) for |t| <= tan(pi/8): P of degree 9 in s = t**2, fitted by least
squares at Chebyshev nodes of [0, tan(pi/8)**2] to (atan t - t) / t**3 evaluated with mpmath
at 40 digits. Prints the coefficients (constant term first) and the error of t + t**3 P(s)
evaluated in double against mpmath, in ulps of the result.
Run: python tests/tools/fit_atan.py (needs mpmath).
"""
import mpmath as mp
import numpy as np

DEGREE = 9


def target(s):
    t = mp.sqrt(s)
    return mp.mpf(-1) / 3 if s == 0 else (mp.atan(t) - t) / t**3


def fit(degree):
    mp.mp.dps = 40
    top = mp.tan(mp.pi / 8) ** 2
    count = 4 * degree + 40
    nodes = [top / 2 * (1 - mp.cos(mp.pi * (k + mp.mpf(1) / 2) / count)) for k in range(count)]
    matrix = mp.matrix([[s**j for j in range(degree + 1)] for s in nodes])
    values = mp.matrix([target(s) for s in nodes])
    coefficients = mp.lu_solve(matrix.T * matrix, matrix.T * values)
    return [float(c) for c in coefficients]


def ulp_error(coefficients, points=401):
    t = np.linspace(0.0, float(mp.tan(mp.pi / 8)), points)[1:]
    s = t * t
    poly = np.zeros_like(s)
    for c in reversed(coefficients):
        poly = poly * s + c
    approx = t + t * s * poly
    exact = np.array([float(mp.atan(mp.mpf(float(x)))) for x in t])
    return float(np.max(np.abs(approx - exact) / np.spacing(exact)))


if __name__ == "__main__":
    coefficients = fit(DEGREE)
    print([repr(c) for c in coefficients])
    print("max error (ulp):", ulp_error(coefficients))
