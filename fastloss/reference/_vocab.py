"""Objectives of language models over the vocabulary, in float64 (see fastloss.reference):
token log-probabilities and entropy, and distillation between a student's and a
teacher's logits (forward KL, reverse KL, generalised Jensen-Shannon divergence).

Each distribution is ``softmax(logits / temperature)`` over the last axis. Rows whose
``target`` equals ``ignore_index`` contribute nothing.
"""

import math

import numpy as np

from fastloss.reference._common import _log_sum_shifted

__all__ = ["distill_kl", "distill_kl_grad", "distill_kl_value_and_grad", "jsd", "jsd_grad",
           "jsd_value_and_grad", "token_log_probs", "token_log_probs_grad",
           "token_log_probs_value_and_grad"]

_DISTILL_REDUCTIONS = ("batchmean", "sum", "none")
_DIRECTIONS = ("forward", "reverse")


def _logits_array(logits, name):
    logits = np.asarray(logits)
    if logits.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {logits.dtype}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {logits.shape}")
    # C order whatever the layout: numpy's sums (of the row's exponentials) add in an
    # order that depends on it, and two models' equal rows must give equal sums
    return np.ascontiguousarray(logits, dtype=np.float64)


def _temperature(temperature):
    if not (np.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")
    return float(temperature)


def _log_softmax(logits, temperature):
    """log softmax(logits / temperature) over the last axis (NaN rows where the
    log-sum-exp is not finite: a +inf or NaN logit, or every logit -inf).

    With a = (logits - max) / T, the sum of exps is 1 (the max's own term, exactly) plus
    the others', so log S = log1p(the others' sum): a converged row's log-probabilities
    near 0 keep their relative accuracy (log of an S near 1 would not).  The max is taken
    off before the division, so that a logit near a large max (1e4, say) keeps a's
    accuracy (logits / T, each rounded to about 1e-16 of itself, would not)."""
    with np.errstate(invalid="ignore"):
        largest = np.max(logits, axis=-1, keepdims=True)
        shifted = (logits - largest) / temperature
        return shifted - _log_sum_shifted(logits, largest, shifted)


def _xlogy_rows(p, log_value):
    """sum_c p_c log_value_c over the last axis with 0 where p_c is 0 (0 log 0 = 0)."""
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(p == 0.0, 0.0, p * log_value), axis=-1)


def _per_row(value, name, loss_shape):
    """A scalar or an array broadcast to the rows' shape, as float64."""
    value = np.asarray(value, dtype=np.float64)
    try:
        return np.broadcast_to(value, loss_shape)
    except ValueError:
        raise ValueError(f"{name}: expected a scalar or shape {loss_shape}, "
                         f"got {value.shape}") from None


# ----------------------------------------------------------------------------------------
# Token log-probabilities and entropy
# ----------------------------------------------------------------------------------------

def _check_tokens(logits, target, temperature, ignore_index):
    logits = _logits_array(logits, "logits")
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target: expected class indices of shape {logits.shape[:-1]}, "
                         f"got {target.shape}")
    n_classes = logits.shape[-1]
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if np.any(bad):
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"target: value {target[position]} at position {position} is out "
                         f"of range for {n_classes} classes (ignore_index={ignore_index})")
    return logits, target, _temperature(temperature), target == ignore_index


def token_log_probs(logits, target, *, temperature=1.0, ignore_index=-100,
                    return_entropy=False):
    """``log softmax(logits / temperature)[target]`` per row and, with ``return_entropy``,
    the entropy ``-sum_c p_c log p_c`` of that distribution; both 0 where ``target`` is
    ``ignore_index``. (torch: ``log_softmax(logits / T, -1).gather(-1, target[..., None])``
    and ``-(p * log p).sum(-1)``.)"""
    logits, target, temperature, ignored = _check_tokens(logits, target, temperature,
                                                         ignore_index)
    log_p = _log_softmax(logits, temperature)
    safe = np.where(ignored, 0, target)
    log_prob = np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    log_prob = np.where(ignored, 0.0, log_prob)
    if not return_entropy:
        return log_prob
    entropy = -_xlogy_rows(np.exp(log_p), log_p)
    return log_prob, np.where(ignored, 0.0, entropy)


def token_log_probs_grad(logits, target, grad_output=1.0, *, grad_entropy=None,
                         temperature=1.0, ignore_index=-100):
    """Gradient of ``sum(grad_output * log_prob + grad_entropy * entropy)`` w.r.t. the
    logits: ``(onehot - p) / T`` for the log-probability and ``-p (log p + H) / T`` for
    the entropy; zero rows where ignored."""
    logits, target, temperature, ignored = _check_tokens(logits, target, temperature,
                                                         ignore_index)
    loss_shape = logits.shape[:-1]
    upstream = _per_row(grad_output, "grad_output", loss_shape)[..., None]
    upstream_entropy = (np.zeros(loss_shape) if grad_entropy is None else
                        _per_row(grad_entropy, "grad_entropy", loss_shape))[..., None]
    log_p = _log_softmax(logits, temperature)
    p = np.exp(log_p)
    # onehot - p, with 1 - p_t at the target as -expm1(log p_t): exact where p_t is near 1
    d_log_prob = -p
    index = np.where(ignored, 0, target)[..., None]
    np.put_along_axis(d_log_prob, index,
                      -np.expm1(np.take_along_axis(log_p, index, axis=-1)), axis=-1)
    entropy = -_xlogy_rows(p, log_p)[..., None]
    with np.errstate(invalid="ignore"):
        d_entropy = np.where(p == 0.0, 0.0, -p * (log_p + entropy))
    grad = (upstream * d_log_prob + upstream_entropy * d_entropy) / temperature
    return np.where(ignored[..., None], 0.0, grad)


def token_log_probs_value_and_grad(logits, target, grad_output=1.0, *, grad_entropy=None,
                                   temperature=1.0, ignore_index=-100, return_entropy=False):
    """``(token_log_probs(...), token_log_probs_grad(...))``."""
    value = token_log_probs(logits, target, temperature=temperature, ignore_index=ignore_index,
                            return_entropy=return_entropy)
    grad = token_log_probs_grad(logits, target, grad_output, grad_entropy=grad_entropy,
                                temperature=temperature, ignore_index=ignore_index)
    return value, grad


# ----------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------

def _check_distill(student_logits, teacher_logits, temperature, target, ignore_index,
                   reduction):
    student = _logits_array(student_logits, "student_logits")
    teacher = _logits_array(teacher_logits, "teacher_logits")
    if teacher.shape != student.shape:
        raise ValueError(f"teacher_logits: expected the student's shape {student.shape}, "
                         f"got {teacher.shape}")
    if reduction not in _DISTILL_REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_DISTILL_REDUCTIONS}, got {reduction!r}")
    ignored = np.zeros(student.shape[:-1], dtype=bool)
    if target is not None:
        target = np.asarray(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"target: expected integer labels, got dtype {target.dtype}")
        if target.shape != student.shape[:-1]:
            raise ValueError(f"target: expected labels of shape {student.shape[:-1]}, "
                             f"got {target.shape}")
        ignored = target == ignore_index
    return student, teacher, _temperature(temperature), ignored


def _beta(beta):
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: expected a value in [0, 1], got {beta}")
    return float(beta)


#: |y| below which g(y) = exp(y) - 1 - y is summed as its series (whose tail after
#: _SERIES_TERMS terms is below 0.5**20 / 22! < 1e-27 of g); above it expm1(y) - y loses
#: at most a factor of 8 to cancellation (at y = -0.5).
_SERIES_BELOW = 0.5
_SERIES_TERMS = 20


def _g(y):
    """g(y) = exp(y) - 1 - y >= 0 elementwise with its relative accuracy: y**2 times
    sum_k y**k / (k + 2)! where |y| < _SERIES_BELOW, expm1(y) - y elsewhere."""
    small = np.abs(y) < _SERIES_BELOW
    t = np.where(small, y, 0.0)
    series = np.zeros_like(t)
    for k in reversed(range(_SERIES_TERMS)):  # Horner's rule
        series = series * t + 1.0 / math.factorial(k + 2)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(small, t * t * series, np.expm1(y) - y)


def _times_g(w, y, w_exp_y):
    """w g(y) and w expm1(y) elementwise, given w e^y (the other distribution's
    probability, which is finite): where e^y overflows (y > 709) beside a w so small
    that w e^y is a number (a subnormal or tiny probability against a likely one), the
    products are taken as w e^y - w - w y and w e^y - w instead of overflowing to inf."""
    with np.errstate(invalid="ignore", over="ignore"):
        times_g, times_expm1 = w * _g(y), w * np.expm1(y)
        overflow = np.isinf(times_expm1) & np.isfinite(y)
        return (np.where(overflow, (w_exp_y - w) - w * y, times_g),
                np.where(overflow, w_exp_y - w, times_expm1))


def _difference(a, b):
    """a - b as its rounded value and the rounding error (Knuth's two-sum): hi + lo is
    exact; lo is 0 where hi is not finite."""
    with np.errstate(invalid="ignore"):
        hi = a - b
        back = hi - a
        lo = (a - (hi - back)) - (b + back)
    return hi, np.where(np.isfinite(hi), lo, 0.0)


def _log_ratio(student, teacher, temperature, q, p):
    """y = log q - log p per class, with its relative accuracy where the models are close.

    y is the logits' own difference less the rows' maxima's, ((x_s - x_t) - (M_s - M_t))
    / T, rounded once (both differences carried as value and rounding error, so that a
    constant between the two models' logits loses nothing), plus the log-sums' difference
    log S_t - log S_s (S = sum_c exp((x_c - M) / T)): no difference of two rounded
    log-probabilities.  That constant is rounded (to about 1e-16 of the log-sums), an
    error c shared by the whole row which the gradient q - p = p expm1(y) of a close pair
    would show; it is removed with sum_c q_c = 1: where |y| < 1/2, p e^y = q e^(-c), so
        s = sum_(|y| < 1/2) p expm1(y) + sum_(others) (q - p) = expm1(-c) sum_(|y| < 1/2) q
    and c = -log1p(s / that sum), itself accurate to about 1e-16 of |c| where that sum
    holds at least half of q (a close pair's; s's terms, each up to q + p, then carry
    at most 4e-16 into c).  With less, the models are far apart, s is a small remainder
    of large terms over a small sum, and y is taken as it is (its own error, about 1e-16
    of the log-sums, is then the smaller)."""
    top_s = np.max(student, axis=-1, keepdims=True)
    top_t = np.max(teacher, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        hi, lo = _difference(student, teacher)
        top_hi, top_lo = _difference(top_s, top_t)
        log_sum_s = np.log(np.sum(np.exp((student - top_s) / temperature), axis=-1, keepdims=True))
        log_sum_t = np.log(np.sum(np.exp((teacher - top_t) / temperature), axis=-1, keepdims=True))
        y = ((hi - top_hi) + (lo - top_lo)) / temperature + (log_sum_t - log_sum_s)
        small = np.abs(y) < 0.5
        s = np.sum(np.where(small, p * np.expm1(y), q - p), axis=-1, keepdims=True)
        q_small = np.sum(np.where(small, q, 0.0), axis=-1, keepdims=True)
        correction = np.log1p(s / q_small)
        # no class near the other model's, or too few (a far pair), or a row with no
        # distribution: no correction
        return y - np.where(np.isfinite(correction) & (q_small >= 0.5), correction, 0.0)


def _less_total(w, difference):
    """w (h - H) per class, H = sum_c w h / sum_c w, given ``difference`` = h - h_a,
    a the heaviest class of w in each row (its own difference exactly 0): H - h_a =
    sum_c w (h - h_a) / sum_c w is then a sum of the other classes' terms, so that
    neither a far pair (h and H both large) nor a class holding nearly all of w (h_a and
    H equal to 1 - w_a) leaves the gradient the difference of two large rounded
    numbers."""
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(w == 0.0, 0.0, w * difference)
        mean = np.sum(terms, axis=-1, keepdims=True) / np.sum(w, axis=-1, keepdims=True)
        return np.where(w == 0.0, 0.0, w * (difference - mean))


def _at_heaviest(w, values):
    """values at each row's heaviest class of w (the first of the largest)."""
    heaviest = np.argmax(w, axis=-1)[..., None]
    return np.take_along_axis(values, heaviest, axis=-1)


def _jsd_gaps(y, beta):
    """u = log m - log p and v = log m - log q from y = log q - log p: log1p of expm1 near
    y = 0, log-add-exp beyond (where expm1 could overflow)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        near = np.abs(y) < 1.0
        u = np.where(near, np.log1p((1.0 - beta) * np.expm1(y)),
                     np.logaddexp(np.log(beta), np.log1p(-beta) + y))
        v = np.where(near, np.log1p(beta * np.expm1(-y)),
                     np.logaddexp(np.log(beta) - y, np.log1p(-beta)))
    return u, v


def _less_infinite_kl(kl, own, other, gradient):
    """A KL's gradient that subtracts it (the forward KL's teacher's, the reverse KL's
    student's), where the KL is +inf: a class the other model rules out (its logit -inf)
    has mass under this one (its logit finite), however little, a probability that
    underflows included.  w (h - KL) is then 0 where this model rules the class out,
    inf - inf (NaN) where the other does, and -inf at every other class."""
    pattern = np.where(own == -np.inf, 0.0, np.where(other == -np.inf, np.nan, -np.inf))
    return np.where(np.isposinf(kl)[..., None], pattern, gradient)


def _divergence(student, teacher, temperature, beta):
    """Per row: the loss, d loss / d student, d loss / d teacher (unscaled), for
    ``beta`` 0 (forward KL(P || Q)), 1 (reverse KL(Q || P)) or between (JSD).

    Every divergence is summed in terms that are all >= 0, from y = log q - log p
    (_log_ratio) and g(y) = exp(y) - 1 - y (_g): sum_c p_c = sum_c q_c = 1 gives
        KL(P || Q) = sum_c p (-y) = sum_c p (e^y - 1 - y) = sum_c p g(y)
    (a class with p = 0 adds q: p g(y) is q - p - p y), so a close pair's KL, of the
    order of y**2, is not the remainder of terms of the order of y that cancel.  Likewise
    KL(Q || P) = sum_c q g(-y), and for the JSD, with u = log m - log p =
    log1p((1 - beta) expm1(y)) and v = log m - log q = log1p(beta expm1(-y)) (u between
    0 and y, v between 0 and -y: log m lies between log p and log q):
        KL(P || M) = sum_c p g(u)  (p = 0 adds m = (1 - beta) q),
        KL(Q || M) = sum_c q g(v)  (q = 0 adds m = beta p).
    Gradients: q - p = p expm1(y), p - q = q expm1(-y), and p (log p - log r - KL),
    the last relative to the heaviest class (_less_total): for the KLs y_c - y_a is the
    logits' own difference (x_s - x_t)_c - (x_s - x_t)_a over T, rounded once; for the
    JSD a class where one model has at least twice the other's probability (saturated)
    keeps its gap less the gap's limit L (-log(1 - beta) for -v = log q - log m, -log
    beta for -u), -softplus(log(beta / (1 - beta)) - y) or -softplus(y - log(beta /
    (1 - beta))), the small part of a gap near its limit, and h_c - h_a is the kept
    values' difference plus L times that of the saturation flags."""
    log_q = _log_softmax(student, temperature)
    log_p = _log_softmax(teacher, temperature)
    q, p = np.exp(log_q), np.exp(log_p)
    y = _log_ratio(student, teacher, temperature, q, p)
    hi, lo = _difference(student, teacher)

    def y_less_heaviest(w):  # y - y_a, a the heaviest class of w
        with np.errstate(invalid="ignore"):
            return ((hi - _at_heaviest(w, hi)) + (lo - _at_heaviest(w, lo))) / temperature

    def gap_less_heaviest(w, gap, saturated, saturation, limit):  # the JSD's h - h_a
        kept = np.where(saturated, saturation, gap)
        with np.errstate(invalid="ignore"):
            flags = saturated.astype(np.float64)
            return (kept - _at_heaviest(w, kept)) + limit * (flags - _at_heaviest(w, flags))

    with np.errstate(invalid="ignore", over="ignore"):
        if beta == 0.0:
            p_g, p_expm1 = _times_g(p, y, q)
            kl = np.sum(np.where(p == 0.0, np.where(y == -np.inf, np.inf, q), p_g), axis=-1)
            loss = kl
            d_student = np.where(p == 0.0, q, p_expm1)
            d_teacher = _less_infinite_kl(kl, teacher, student, -_less_total(
                p, y_less_heaviest(p)))
        elif beta == 1.0:
            q_g, q_expm1 = _times_g(q, -y, p)
            kl = np.sum(np.where(q == 0.0, np.where(y == np.inf, np.inf, p), q_g), axis=-1)
            loss = kl
            d_student = _less_infinite_kl(kl, student, teacher, _less_total(
                q, y_less_heaviest(q)))
            d_teacher = np.where(q == 0.0, p, q_expm1)
        else:
            u, v = _jsd_gaps(y, beta)
            m = beta * p + (1.0 - beta) * q
            kl_p = np.sum(np.where(p == 0.0, (1.0 - beta) * q, _times_g(p, u, m)[0]), axis=-1)
            kl_q = np.sum(np.where(q == 0.0, beta * p, _times_g(q, v, m)[0]), axis=-1)
            loss = beta * kl_p + (1.0 - beta) * kl_q
            log_odds = np.log(beta) - np.log1p(-beta)
            saturation_s = -np.logaddexp(0.0, log_odds - y)  # -v - (-log(1 - beta))
            saturation_t = -np.logaddexp(0.0, y - log_odds)  # -u - (-log beta)
            d_student = (1.0 - beta) * _less_total(
                q, gap_less_heaviest(q, -v, y >= np.log(2.0), saturation_s, -np.log1p(-beta)))
            d_teacher = beta * _less_total(
                p, gap_less_heaviest(p, -u, y <= -np.log(2.0), saturation_t, -np.log(beta)))
    # a row where either model has no distribution (a +inf or NaN logit, or every logit
    # -inf: _log_softmax's NaN rows) is NaN throughout, its loss and both gradients
    undefined = np.any(np.isnan(log_q) | np.isnan(log_p), axis=-1)
    return (np.where(undefined, np.nan, loss),
            np.where(undefined[..., None], np.nan, d_student / temperature),
            np.where(undefined[..., None], np.nan, d_teacher / temperature))


def _reduce(loss, ignored, reduction):
    loss = np.where(ignored, 0.0, loss)
    if reduction == "none":
        return loss
    total = float(np.sum(loss))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / np.float64(np.sum(~ignored)))


def _distill_value_and_grad(student_logits, teacher_logits, grad_output, beta, temperature,
                            target, ignore_index, reduction, wrt):
    student, teacher, temperature, ignored = _check_distill(
        student_logits, teacher_logits, temperature, target, ignore_index, reduction)
    loss, d_student, d_teacher = _divergence(student, teacher, temperature, beta)
    value = _reduce(loss, ignored, reduction)
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in names:
        if name not in ("student_logits", "teacher_logits"):
            raise ValueError(f"wrt: expected 'student_logits' and/or 'teacher_logits', "
                             f"got {name!r}")
    loss_shape = student.shape[:-1]
    if reduction == "none":
        scale = _per_row(grad_output, "grad_output", loss_shape)
    else:
        scale = np.broadcast_to(np.float64(grad_output), loss_shape)
        if reduction == "batchmean":
            scale = scale / np.sum(~ignored)
    scale = np.where(ignored, 0.0, scale)[..., None]
    grads = {"student_logits": np.where(ignored[..., None], 0.0, scale * d_student),
             "teacher_logits": np.where(ignored[..., None], 0.0, scale * d_teacher)}
    grad = grads[wrt] if isinstance(wrt, str) else tuple(grads[name] for name in names)
    return value, grad


def _distill_grad_magnitude(student_logits, teacher_logits, grad_output=1.0, *, beta,
                            temperature=1.0, target=None, ignore_index=-100,
                            reduction="batchmean", wrt="student_logits"):
    """Per name in ``wrt``, the size of the terms each entry of a gradient that subtracts
    a total takes the difference of (docs/accuracy.rst, "Gradients that subtract a
    total"): ``|s| w_c (|h_c| + sum_c' w_c' |h_c'| / sum_c' w_c')`` for the entry
    ``s w_c (h_c - H)``, ``H = sum_c w_c h_c / sum_c w_c`` (``s`` = grad_output / T, and /
    the rows for "batchmean"; ``w``, ``h``: the reverse KL's student's q and log q - log
    p, the forward KL's teacher's p and log p - log q, the JSD's (1 - beta) q and log q -
    log m, and beta p and log p - log m).  0 for the gradients that subtract none (the
    forward KL's student's q - p, the reverse KL's teacher's p - q)."""
    student, teacher, temperature, ignored = _check_distill(
        student_logits, teacher_logits, temperature, target, ignore_index, reduction)
    log_q, log_p = _log_softmax(student, temperature), _log_softmax(teacher, temperature)
    q, p = np.exp(log_q), np.exp(log_p)
    y = _log_ratio(student, teacher, temperature, q, p)
    if beta == 0.0:
        terms = {"student_logits": None, "teacher_logits": (p, -y)}
    elif beta == 1.0:
        terms = {"student_logits": (q, y), "teacher_logits": None}
    else:
        u, v = _jsd_gaps(y, beta)
        terms = {"student_logits": ((1.0 - beta) * q, -v), "teacher_logits": (beta * p, -u)}
    loss_shape = student.shape[:-1]
    scale = np.abs(np.broadcast_to(np.asarray(grad_output, np.float64), loss_shape))
    if reduction == "batchmean":
        scale = scale / np.sum(~ignored)
    scale = np.where(ignored, 0.0, scale)[..., None] / temperature

    def magnitude(pair):
        if pair is None:
            return np.zeros(student.shape)
        w, h = pair
        with np.errstate(invalid="ignore", over="ignore"):
            size = np.where(w == 0.0, 0.0, w * np.abs(h))
            mean = np.sum(size, axis=-1, keepdims=True) / np.sum(w, axis=-1, keepdims=True)
            return scale * np.where(w == 0.0, 0.0, w * np.abs(h) + w * mean)

    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    return tuple(magnitude(terms[name]) for name in names)


def _direction_beta(direction):
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected one of {_DIRECTIONS}, got {direction!r}")
    return 0.0 if direction == "forward" else 1.0


def distill_kl(student_logits, teacher_logits, *, temperature=1.0, direction="forward",
               target=None, ignore_index=-100, reduction="batchmean"):
    """KL divergence between the teacher's P and the student's Q = softmax(logits / T):
    ``direction="forward"``: KL(P || Q) = sum_c p_c (log p_c - log q_c) (torch:
    ``F.kl_div(log_softmax(student / T), log_softmax(teacher / T), log_target=True)``);
    ``"reverse"``: KL(Q || P). "batchmean" sums over the vocabulary and averages over the
    rows whose ``target`` is not ``ignore_index`` (all rows when target is None)."""
    return _distill_value_and_grad(student_logits, teacher_logits, 1.0,
                                   _direction_beta(direction), temperature, target,
                                   ignore_index, reduction, "student_logits")[0]


def distill_kl_grad(student_logits, teacher_logits, grad_output=1.0, *, temperature=1.0,
                    direction="forward", target=None, ignore_index=-100,
                    reduction="batchmean", wrt="student_logits"):
    """Gradient of ``grad_output * distill_kl(...)`` w.r.t. ``wrt`` ("student_logits",
    "teacher_logits", or a tuple of both)."""
    return _distill_value_and_grad(student_logits, teacher_logits, grad_output,
                                   _direction_beta(direction), temperature, target,
                                   ignore_index, reduction, wrt)[1]


def distill_kl_value_and_grad(student_logits, teacher_logits, grad_output=1.0, *,
                              temperature=1.0, direction="forward", target=None,
                              ignore_index=-100, reduction="batchmean", wrt="student_logits"):
    """``(distill_kl(...), distill_kl_grad(...))``."""
    return _distill_value_and_grad(student_logits, teacher_logits, grad_output,
                                   _direction_beta(direction), temperature, target,
                                   ignore_index, reduction, wrt)


def jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, target=None,
        ignore_index=-100, reduction="batchmean"):
    """Generalised Jensen-Shannon divergence ``beta KL(P || M) + (1 - beta) KL(Q || M)``,
    ``M = beta P + (1 - beta) Q``, P the teacher's and Q the student's softmax(logits / T);
    as Liger-Kernel's and TRL's, ``beta = 0`` is the forward KL(P || Q) and ``beta = 1``
    the reverse KL(Q || P). Reductions as in :func:`distill_kl`."""
    return _distill_value_and_grad(student_logits, teacher_logits, 1.0, _beta(beta),
                                   temperature, target, ignore_index, reduction,
                                   "student_logits")[0]


def jsd_grad(student_logits, teacher_logits, grad_output=1.0, *, beta=0.5, temperature=1.0,
             target=None, ignore_index=-100, reduction="batchmean", wrt="student_logits"):
    """Gradient of ``grad_output * jsd(...)`` w.r.t. ``wrt``."""
    return _distill_value_and_grad(student_logits, teacher_logits, grad_output, _beta(beta),
                                   temperature, target, ignore_index, reduction, wrt)[1]


def jsd_value_and_grad(student_logits, teacher_logits, grad_output=1.0, *, beta=0.5,
                       temperature=1.0, target=None, ignore_index=-100,
                       reduction="batchmean", wrt="student_logits"):
    """``(jsd(...), jsd_grad(...))``."""
    return _distill_value_and_grad(student_logits, teacher_logits, grad_output, _beta(beta),
                                   temperature, target, ignore_index, reduction, wrt)
