"""The elementwise losses, one term per element (the public NumPy API).

Every function here is generated from its entry in the registry (fastloss/_registry.py):
``NAME``, ``NAME_grad`` and ``NAME_value_and_grad`` of ``mse``, ``l1``, ``huber``,
``smooth_l1``, ``bce_with_logits``, ... The kernels are in csrc/elementwise.c;
``fastloss.reference`` has the float64 oracle with the same semantics.

Shapes and dtypes follow torch: the inputs broadcast to one shape (torch broadcasts
them too, with a warning; an entry with ``same_shape``, ``bce_with_logits``, needs equal
shapes, as torch), "mean" divides by the number of elements of that shape (mse and l1
with a weight: by the weight's sum, see :func:`mse`), and when broadcasting enlarged an
input its gradient is summed back to that input's shape, as autograd does. float32 and
float64 combine to float64; an integer or bool target takes the first input's dtype.
The loss has the combined dtype and each gradient its argument's dtype. ``weight`` (and
the entry's periodic factor: ``pos_weight``) broadcast to the loss's shape. ``wrt=``
asks the gradient functions for the gradients w.r.t. the other differentiable
arguments too, with the shapes and dtypes of those arguments.
"""
import math

import numpy as np

from fastloss import _kernels, _registry
from fastloss._config import resolve_num_threads
from fastloss._validation import (
    _address,
    _sum_to_shape,
    broadcast_to_shape,
    float_array,
    grad_output_arg,
    is_float,
    is_half,
    out_arg,
    outs_per_name,
    periodic_factor,
    promote_float,
    real_array,
    reduction_arg,
)


def _exact_in(array, dtype):
    """Whether every value of `array` is a value of `dtype` (so converting loses nothing)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(array.astype(dtype).astype(np.float64),
                                   array.astype(np.float64), equal_nan=True))


def _quantile_needs_double(quantile, dtype):
    """Whether float32 (``dtype``) rounds a quantile q so far that q or 1 - q, which
    pinball's kernel forms from it (``max(q r, (q - 1) r)``), moves by more than 2**-21
    of itself (8 float32 units): q = 0.999 rounds to 0.99900001287, 1 - q by 1.3e-5 of
    itself, more than the contract's 2e-6, while q = 0.9 (2.4e-7) or a float32 quantile
    (exact) leave room for the kernel's own roundings. Such a quantile is computed in
    float64 and the results rounded once to float32."""
    if np.dtype(dtype) != np.float32:
        return False
    q = np.asarray(quantile, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        moved = np.abs(q.astype(np.float32).astype(np.float64) - q)
    return bool(np.any(moved > 2.0**-21 * np.minimum(q, 1 - q)))


def _margin_needs_double(margin, dtype):
    """Whether float32 (``dtype``) would move bradley_terry's margin by more than 2**-22.
    z = chosen - rejected - margin then moves by as much, and the loss softplus(-z) and
    its slope sigmoid(-z) by up to that much relative (their logarithmic slopes are at
    most 1): margin = 990.1 rounds by 2.4e-5, beyond the contract's 2e-6, and 1e30 next
    to chosen = float32(1e30) turns a loss of 0 into log 2. The reference takes the
    margin as given; such a margin is computed in float64 and the results rounded once.
    A margin float32 holds, or any below 8 in magnitude (0.1: 1.5e-9), stays in float32."""
    if dtype != np.float32:
        return False
    margin = np.asarray(margin)
    if margin.ndim == 0:
        if abs(float(margin)) < 8.0:
            return False  # float32 rounds it by at most 2**-22 (the usual call)
    elif margin.dtype == np.float32 or is_half(margin.dtype) or margin.dtype == np.bool_:
        return False  # exact in float32: no pass over a per-pair margin
    margin = margin.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        moved = np.abs(margin.astype(np.float32).astype(np.float64) - margin)
    return bool(np.any(moved > 2.0**-22))


#: the loss's threshold option, which the float32 kernels hold (with smooth_l1's 1 / beta
#: and 0.5 / beta) in float
_THRESHOLD_OPTION = {"huber": "delta", "smooth_l1": "beta"}


def _threshold_needs_double(entry, checked, dtype):
    """Whether a computation in float (float32, and the half types) would round huber's
    delta or smooth_l1's beta (or smooth_l1's 1 / beta and 0.5 / beta) out of float's
    normal range: a subnormal float holds beta = 1e-40 to 3.5e-6 of itself, more than the
    contract's 2e-6, and 1e200 becomes inf (inf - inf in the loss). Such a threshold is
    computed in float64 and the results rounded once; 0 (smooth_l1's l1) and every
    threshold in [2**-125, 2**125] stay in float."""
    option = _THRESHOLD_OPTION.get(entry.kernel)
    if option is None:
        return False
    threshold = checked[option]
    if threshold == 0.0 or 2.0**-125 <= threshold <= 2.0**125:
        return False
    return dtype == np.float32 or is_half(dtype)


def _mirrored_quantile(quantile, dtype):
    """1 - q (exact in float64 for q >= 0.5), when every quantile q is at least 0.5 and
    float32 holds 1 - q where it cannot hold q (``_quantile_needs_double``), else None.
    pinball(pred, target, q) = pinball(target, pred, 1 - q), the residual's sign and the
    quantile's side both turned: the kernel then forms its ``q - 1`` from 1 - q rounded
    to float32, which is -q to float32's precision, and the call keeps the float32 pass
    (about five times faster than float64's). A vector with quantiles on both sides of
    0.5, or one too near 1 for float32 to hold 1 - q as a normal number, stays in float64."""
    q = np.asarray(quantile, dtype=np.float64)
    if not np.all(q >= 0.5):
        return None
    mirrored = 1.0 - q
    return None if _quantile_needs_double(mirrored, dtype) else mirrored


def _flat(array, shape, dtype):
    """`array` broadcast to `shape` as a contiguous 1-d array of `dtype` (a view when it
    already is one)."""
    if array.shape != shape:
        array = np.broadcast_to(array, shape)
    # contiguous, aligned and native (ascontiguousarray alone keeps a misaligned array)
    return np.require(array, dtype=dtype, requirements="CA").reshape(-1)


class _Problem:
    """Checked arguments of one call of elementwise loss ``entry`` (a registry Loss), in
    the layout the kernels read: the entry's inputs (two to four) broadcast to the
    loss's shape as contiguous 1-d arrays of one dtype, the kernel's ``pred``, ``target``,
    ``aux`` and ``aux2`` streams in that order, with the periodic ``weight`` and factor."""

    def __init__(self, entry, arrays, options, reduction, num_threads):
        self.entry = entry
        names = self.names = entry.inputs
        self.pred_name = names[0]
        checked = {option.name: option.checked(options[option.name])
                   for option in entry.options}
        arrays = [float_array(arrays[0], names[0], half=True)] + [
            real_array(array, name) for array, name in zip(arrays[1:], names[1:])]
        # the shapes the caller gave (each gradient has its argument's), then the loss's
        # own rules (gaussian_nll's var one axis short of input)
        self.input_shapes = tuple(array.shape for array in arrays)
        self.input_dtypes = tuple(array.dtype for array in arrays)
        if entry.prepare is not None:
            arrays = entry.prepare(arrays, checked)
        self.expanded_shapes = tuple(array.shape for array in arrays)
        dtype = arrays[0].dtype
        for array, name in zip(arrays[1:], names[1:]):
            if is_float(array.dtype) and array.dtype != dtype:
                dtype = promote_float(dtype, array.dtype)
                if not (dtype in (np.float32, np.float64) or is_half(dtype)):
                    raise TypeError(f"{name}: expected a float32, float64, float16, bfloat16 "
                                    f"or integer array, got dtype {array.dtype}")
        widen = False  # a half-precision computation done in float32 (results in half)
        if is_half(dtype):
            # the kernels read the weight and the factor in the inputs' dtype: one whose
            # values the half type does not hold exactly widens the computation rather
            # than be rounded: a float array promotes (as torch), a scalar or integers
            # (weak, as in torch) make it float32 with results still in the half type
            for extra_name in ("weight", entry.factor):
                extra = checked.get(extra_name) if extra_name else None
                if extra is not None and is_half(dtype):
                    extra = real_array(extra, extra_name)
                    if extra.dtype == dtype or _exact_in(extra, dtype):
                        continue
                    if extra.ndim and is_float(extra.dtype):
                        dtype = promote_float(dtype, extra.dtype)
                    else:
                        widen = True
        shape = arrays[0].shape
        for array, name in zip(arrays[1:], names[1:]):
            if array.shape == shape:
                continue
            if entry.same_shape:
                if array.shape != arrays[0].shape:
                    raise ValueError(f"{name}: expected the shape of {names[0]} "
                                     f"{arrays[0].shape}, got {array.shape}")
                continue
            try:
                shape = np.broadcast_shapes(shape, array.shape)
            except ValueError:
                raise ValueError(f"{name}: shape {array.shape} does not broadcast with "
                                 f"{names[0]}'s shape {arrays[0].shape}"
                                 + (f" and the other inputs' ({shape})"
                                    if shape != arrays[0].shape else "")) from None
        self.loss = entry.kernel
        self.reduction = reduction_arg(reduction, entry.reductions)
        # kl_div's "batchmean": the kernel's sum, divided by the first input's first
        # dimension (none for a 0-d input), as torch's F.kl_div
        self.divisor = None
        if self.reduction == "batchmean":
            self.reduction = "sum"
            first = self.input_shapes[0]
            self.divisor = np.float64(first[0] if first else 1)
        self.params = entry.params(checked)
        self.num_threads = resolve_num_threads(num_threads)
        self.pred_shape, self.pred_dtype = self.input_shapes[0], self.input_dtypes[0]
        self.shape = shape
        self.dtype = np.dtype(dtype)
        # half precision: the per-element loss is returned in the half type, rounded once;
        # where a gradient is summed over broadcast axes (a sum of rounded halves would
        # round twice), or a weight or factor needs it, the kernels compute and store
        # float32, rounded to the half type at the end.  float32 inputs of which one is
        # broadcast compute in float64 for the same reason: the terms of a broadcast
        # input's gradient may cancel in their sum, which float32-rounded terms would
        # leave with an error of their own size (the fuzz run: mse's 0-d pred against
        # three targets, slopes of +-5 summing to -0.035, 7e-6 of itself off)
        self.result_dtype = self.dtype
        self.mirrored_quantile = None
        broadcast = any(expanded != shape for expanded in self.expanded_shapes)
        if is_half(self.dtype) and (widen or broadcast):
            self.dtype = dtype = np.dtype(np.float32)
        elif self.dtype == np.float32 and broadcast:
            self.dtype = dtype = np.dtype(np.float64)
        elif entry.factor == "quantile" and _quantile_needs_double(checked["quantile"], dtype):
            # pinball with a quantile float32 cannot hold: its mirror image in float32
            # where there is one, else float64
            self.mirrored_quantile = _mirrored_quantile(checked["quantile"], dtype)
            if self.mirrored_quantile is None:
                self.dtype = dtype = np.dtype(np.float64)
        if _threshold_needs_double(entry, checked, dtype) or (
                entry.factor == "margin" and _margin_needs_double(checked["margin"], dtype)):
            self.dtype = dtype = np.dtype(np.float64)
        self.flat = [_flat(array, shape, dtype) for array in arrays]
        self.pred = self.flat[0]
        self.weight = self.factor = self.weight_array = None
        # mse and l1 with a weight take torch's weighted mean, sum(w * l) / sum(w), with
        # the weight as paired with pred: a target that enlarges the loss's shape
        # repeats each of those weights n / (their count) times (elementwise.h)
        self.weight_sum_repeats = 1
        weight = checked.get("weight")
        if weight is not None:
            weight = broadcast_to_shape(real_array(weight, "weight"), shape, "weight",
                                        "the loss's shape")
            self.weight_array = weight
            self.weight = periodic_factor(weight, shape, dtype)
            paired = math.prod(np.broadcast_shapes(weight.shape, arrays[0].shape))
            if entry.weighted_mean and paired:
                self.weight_sum_repeats = math.prod(shape) // paired
        factor = checked.get(entry.factor) if entry.factor else None
        if factor is not None:
            name = entry.factor
            factor = real_array(factor, name)
            try:
                owner = self.pred_name + ("'" if self.pred_name.endswith("s") else "'s")
                broadcast_to_shape(factor, shape, name, f"the {owner} shape")
            except ValueError as error:
                expected = (f"one value per class of the last axis, shape ({shape[-1]},)"
                            if shape else f"a 0-d {name} for 0-d {self.pred_name}, as torch")
                raise ValueError(f"{error} (expected {expected})") from None
            if self.mirrored_quantile is not None:
                factor = self.mirrored_quantile.reshape(np.shape(factor))
            self.factor = periodic_factor(factor, shape, dtype)

    def _wrt(self, wrt, out):
        """The gradients asked for: (names, single, the out= buffer of each or None)."""
        single = isinstance(wrt, str)
        if not single and not isinstance(wrt, (tuple, list)):
            raise TypeError(f"wrt: expected an argument's name or a tuple of names, "
                            f"got {wrt!r}")
        names = (wrt,) if single else tuple(wrt)
        allowed = self.entry.differentiable
        torch_form = self.entry.torch
        for name in names:
            if torch_form and name in torch_form.not_differentiable:
                raise ValueError(f"wrt: {name}: torch's {torch_form.function} is not "
                                 f"differentiable with respect to {name}, nor is this")
            if not isinstance(name, str) or name not in allowed:
                raise ValueError(f"wrt: expected names from {allowed}, got {name!r}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"wrt: expected distinct names from {allowed}, got {wrt!r}")
        for name, dtype in zip(self.names[1:], self.input_dtypes[1:]):
            if name in names and not is_float(dtype):
                raise TypeError(f"wrt: {name}: a {dtype} {name} has no gradient (a float "
                                f"{name} has)")
        if "weight" in names:
            if self.weight_array is None:
                raise ValueError("wrt: weight: no weight was given")
            if not is_float(self.weight_array.dtype):
                raise TypeError(f"wrt: weight: a {self.weight_array.dtype} weight has no "
                                f"gradient (a float weight has)")
        return names, single, outs_per_name(out, names, single)

    def run(self, mode, *, grad_output=None, out=None, wrt=None):
        """Call the kernel; returns (loss, grad) with the loss shaped for the reduction
        and grad the gradient w.r.t. the argument named by ``wrt`` (default: the first
        input), or a tuple of them when ``wrt`` is a tuple of names."""
        n = self.pred.size
        per_element = (np.empty(n, dtype=self.dtype)
                       if self.reduction == "none" and mode != "backward" else None)
        if mode == "forward" or wrt is None or wrt == self.pred_name:  # the common call
            names, single, outs = (self.pred_name,), True, {self.pred_name: out}
        else:
            names, single, outs = self._wrt(wrt, out)
        grad = upstream = None
        buffers = [None] * len(self.names)  # the kernel's gradient of each input stream
        if mode != "forward":
            upstream = grad_output_arg(grad_output, self.reduction, self.shape)
            if self.divisor is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    upstream = upstream / self.divisor
            if self.pred_name in names:
                buffers[0], grad = self._grad_buffer(outs[self.pred_name], upstream)
            for index in range(1, len(self.names)):
                name = self.names[index]
                if name in names:
                    if outs[name] is not None:
                        out_arg(outs[name], self.input_shapes[index], self.input_dtypes[index],
                                f"out ({name})")
                    buffers[index] = _kernels.empty((n,), self.dtype)
            if "weight" in names and outs["weight"] is not None:
                out_arg(outs["weight"], self.weight_array.shape, self.weight_array.dtype,
                        "out (weight)")
        # the weight's gradient reads the inputs: before a gradient overwrites them
        weight_full = self._weight_grad(upstream) if upstream is not None and \
            "weight" in names else None
        kernel_mode = mode
        if mode != "forward" and all(buffer is None for buffer in buffers):
            kernel_mode = "forward" if mode == "value_and_grad" else None  # the weight's alone
        total = 0.0
        if kernel_mode is not None:
            # the loss meets the contract as the kernel returns it, where float32 terms
            # cancel and in place too (csrc/elementwise.c's numerical policy)
            total, _ = self._kernel(kernel_mode, upstream, per_element, buffers)
        if per_element is None:  # a Python float holding a value of the loss's dtype
            if self.divisor is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    total = np.float64(total) / self.divisor
            # (float32 for half-precision inputs: computed and summed in float32 / float64)
            loss = float(np.float32(total) if is_half(self.result_dtype)
                         else self.result_dtype.type(total))
        else:
            loss = per_element.reshape(self.shape).astype(self.result_dtype, copy=False)
        if mode == "forward":
            return loss, None
        grads = []
        for name in names:
            if name == self.pred_name:
                grads.append(grad if grad is not None
                             else self._finish(buffers[0], 0, outs[name]))
            elif name == "weight":
                grads.append(self._finish_array(weight_full, self.weight_array.shape,
                                                self.weight_array.shape,
                                                self.weight_array.dtype, outs["weight"]))
            else:
                index = self.names.index(name)
                grads.append(self._finish(buffers[index], index, outs[name]))
        return loss, (grads[0] if single else tuple(grads))

    def _kernel(self, mode, upstream, per_element, buffers, inputs=None, reduction=None):
        """ew_run on the call's streams (or ``inputs``: (streams, weight, factor)), the
        gradient of input stream i into ``buffers[i]`` where it is not None."""
        flat, weight, factor = inputs or (self.flat, self.weight, self.factor)
        if self.mirrored_quantile is not None:
            return self._mirrored_kernel(mode, upstream, per_element, buffers, flat, factor,
                                         reduction)
        extra = {}  # keywords only when needed: they cost the common call a dict
        if len(buffers) > 1 and buffers[1] is not None:
            extra["grad_target"] = buffers[1]
        if len(flat) > 2:
            extra["aux"] = flat[2]
            if len(buffers) > 2 and buffers[2] is not None:
                extra["grad_aux"] = buffers[2]
        if len(flat) > 3:  # dpo's reference_rejected
            extra["aux2"] = flat[3]
            if len(buffers) > 3 and buffers[3] is not None:
                extra["grad_aux2"] = buffers[3]
        if self.weight_sum_repeats != 1:
            extra["weight_sum_repeats"] = self.weight_sum_repeats
        return _kernels.ew_run(mode, self.loss, flat[0], flat[1], weight, factor, upstream,
                               per_element, buffers[0], self.params,
                               reduction or self.reduction, self.num_threads, **extra)

    def _mirrored_kernel(self, mode, upstream, per_element, buffers, flat, factor,
                         reduction):
        """pinball on (target, pred) with the factor 1 - q (``_mirrored_quantile``): the
        kernel's gradient of its first stream is target's, of its second pred's. Its
        second gradient may overlap no input (ew_run), so pred's gradient written over
        pred or target itself is computed aside and copied in."""
        grad_pred, grad_target = buffers[0], buffers[1] if len(buffers) > 1 else None
        aside = grad_pred is not None and any(np.may_share_memory(grad_pred, data)
                                              for data in flat)
        written = np.empty_like(grad_pred) if aside else grad_pred
        extra = {} if written is None else {"grad_target": written}
        result = _kernels.ew_run(mode, self.loss, flat[1], flat[0], None, factor, upstream,
                                 per_element, grad_target, self.params,
                                 reduction or self.reduction, self.num_threads, **extra)
        if aside:
            np.copyto(grad_pred, written)
        return result

    def _weight_grad(self, upstream):
        """The gradient w.r.t. the weight over the loss's shape (float64), from the
        unweighted loss per element l: ``l * grad_output`` (/ n for the mean), or through
        torch's weighted mean L = S / W of mse and l1 (S = sum w l, W = the sum of the
        weight as paired with pred, each of whose values stands for R = weight_sum_repeats
        elements), per element ``grad_output * (l W - S / R) / W**2``: summed over a
        weight's elements that is dL/dw = (sum of its l) / W - (its count in W) S / W**2,
        and exactly 0 where one weight covers everything (the loss does not depend on it).
        The unweighted loss is computed in float64 whatever the inputs' dtype: through the
        weighted mean its terms cancel in proportion to how little the loss depends on
        the weights, which a float32 l would not survive."""
        unweighted = np.empty(self.pred.size, dtype=np.float64)
        flat = [array.astype(np.float64, copy=False) for array in self.flat]
        factor = None if self.factor is None else self.factor.astype(np.float64, copy=False)
        self._kernel("forward", None, unweighted, [None] * 3, inputs=(flat, None, factor),
                     reduction="none")
        loss = unweighted.reshape(self.shape)
        if self.reduction == "none":
            # grad_output_arg gives one value per element, or one for all of them
            return loss * (upstream.reshape(self.shape) if upstream.size == loss.size
                           else upstream[0])
        scale = float(upstream[0])
        if self.reduction == "sum":
            return loss * scale
        if self.entry.weighted_mean:
            weight = self.weight_array.astype(np.float64)
            paired = np.broadcast_to(weight, np.broadcast_shapes(weight.shape, self.pred_shape))
            # the two sums as the kernel's mean takes them: exact where they cancel
            weight_sum = _cancel_safe_sum(paired)
            weighted_sum = _cancel_safe_sum(loss * weight)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                return scale * (loss * weight_sum - weighted_sum / self.weight_sum_repeats) \
                    / weight_sum**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return loss * (scale / np.float64(loss.size))

    def _finish(self, flat, index, out):
        """Input ``index``'s gradient from the kernel's buffer over the loss's shape."""
        return self._finish_array(flat.reshape(self.shape), self.expanded_shapes[index],
                                  self.input_shapes[index], self.input_dtypes[index], out)

    @staticmethod
    def _finish_array(full, expanded, shape, dtype, out):
        """A gradient over the loss's shape summed to the argument's broadcast shape
        ``expanded``, reshaped to the shape the caller gave and cast to its ``dtype``,
        or written into ``out``."""
        full = np.asarray(full)  # 0-d arithmetic gives NumPy scalars
        grad = _sum_to_shape(full, expanded) if full.shape != expanded else full
        grad = grad.reshape(shape)
        if out is None:
            return grad.astype(dtype, copy=False)
        np.copyto(out, grad, casting="unsafe")
        return out

    def _grad_buffer(self, out, upstream):
        """(1-d buffer the kernel writes, the gradient to return), or (buffer, None) when
        the buffer still needs summing over broadcast axes, casting or copying."""
        direct = (self.shape == self.pred_shape == self.expanded_shapes[0]
                  and self.dtype == self.pred_dtype)
        if out is None:
            if not direct:
                return np.empty(self.pred.size, dtype=self.dtype), None
            grad = _kernels.empty(self.shape, self.dtype)
            return grad.reshape(-1), grad
        out_arg(out, self.pred_shape, self.pred_dtype)
        if direct and out.flags.c_contiguous and out.flags.aligned:
            # (as a base ndarray: an np.matrix out reshapes to a (1, n) matrix)
            flat = out.view(np.ndarray).reshape(-1)
            # The kernel reads a tile of pred and target before it writes that tile's
            # gradient: the gradient may be one of them exactly, never overlap otherwise.
            safe = not flat.size or all(
                _address(flat) == _address(data) or not np.may_share_memory(flat, data)
                for data in self.flat[:2])
            safe = safe and not any(np.may_share_memory(flat, data) for data in
                                    (*self.flat[2:], self.weight, self.factor, upstream)
                                    if data is not None)
            if safe:
                return flat, out
        # out= has a layout the kernel cannot write, or the gradient needs a sum over
        # broadcast axes or a cast, or out overlaps an input other than exactly in place:
        # compute into a fresh buffer, then finish into out.
        return np.empty(self.pred.size, dtype=self.dtype), None


def _cancel_safe_sum(values):
    """The sum of float64 ``values``; where terms of both signs cancel below half their
    magnitude, their exactly rounded sum (the kernels redo such a sum compensated,
    csrc/elementwise.c; a double sum is within n u sum|v| of it, no bound relative to
    what is left)."""
    total = np.sum(values)
    if not (np.isfinite(total) and abs(total) < 0.5 * np.sum(np.abs(values))):
        return total
    try:
        return math.fsum(np.ravel(values))
    except OverflowError:  # a partial beyond float64's range
        return total


# ----------------------------------------------------------------------------------------
# The public functions, generated from the registry
# ----------------------------------------------------------------------------------------

def _run(entry, mode, arrays, options, reduction, num_threads, grad_output=None, out=None,
         wrt=None):
    return _Problem(entry, arrays, options, reduction, num_threads).run(
        mode, grad_output=grad_output, out=out, wrt=wrt)


_FUNCTIONS = {}
for _entry in _registry.family("elementwise"):
    _FUNCTIONS.update(_registry.public_functions(_entry, _run, __name__))
globals().update(_FUNCTIONS)
__all__ = sorted(_FUNCTIONS)
del _entry
