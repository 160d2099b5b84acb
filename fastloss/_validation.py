"""Argument checks shared by the public API: clear exceptions that name the
argument, and the conversions that turn user input into what the Cython
layer accepts.  No loops over elements here."""
import math
import numbers
import operator

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def as_array(value, name):
    """np.asarray(value), with NumPy's own conversion errors (a ragged nested list, an
    object NumPy cannot hold) raised again naming the argument.

    A masked array with masked elements is refused: np.asarray would drop its mask and
    the masked elements would enter the loss with whatever data they hold (where NumPy's
    own reductions skip them).  One with nothing masked is its data."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmask(value) is not np.ma.nomask \
            and value.mask.any():
        raise ValueError(f"{name}: a masked array with {np.count_nonzero(value.mask)} masked "
                         f"element(s); fastloss does not skip masked elements: pass "
                         f"{name}.filled(...) or the unmasked rows, or use ignore_index / "
                         f"a weight of 0 where the loss has one")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: expected an array of numbers, got {type(value).__name__} "
                          f"that NumPy cannot convert ({error})") from None


def is_bfloat16(dtype):
    """Whether `dtype` is ml_dtypes.bfloat16 (without importing ml_dtypes: an array of
    it exists only where the caller imported it)."""
    return (dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"
            and getattr(dtype.type, "__module__", "").split(".")[0] == "ml_dtypes")


def is_half(dtype):
    """Whether `dtype` is a half-precision type the kernels store: float16 or bfloat16."""
    return (dtype.kind == "f" and dtype.itemsize == 2) or is_bfloat16(dtype)


def is_float(dtype):
    """float16, bfloat16, float32 or float64 (and the like: any real float dtype)."""
    return dtype.kind == "f" or is_bfloat16(dtype)




def promote_float(first, second):
    """NumPy's promotion of two float dtypes, with float16 and bfloat16 (which NumPy
    cannot promote together) giving float32, as torch does."""
    try:
        return np.promote_types(first, second)
    except TypeError:
        return np.dtype(np.float32)


def float_array(value, name, half=False):
    """`value` as a float32/float64 ndarray (native byte order, aligned); with `half`,
    float16 and ml_dtypes.bfloat16 arrays are taken too.

    Integer, bool, complex and object input, and float16 / bfloat16 without `half`,
    raise TypeError naming the dtypes accepted: casting them silently would hide a
    bug in the caller.
    """
    array = as_array(value, name)
    dtype = array.dtype
    if not ((dtype.kind == "f" and dtype.itemsize in (4, 8)) or (half and is_half(dtype))):
        raise TypeError(f"{name}: expected a float32 or float64 array"
                        f"{', or float16 / ml_dtypes.bfloat16' if half else ''}, "
                        f"got dtype {array.dtype}")
    if not array.dtype.isnative or not array.flags.aligned:
        array = np.require(array, dtype=array.dtype.newbyteorder("="), requirements="A")
    return array


def grad_dtype_arg(grad_dtype, dtype, owner="the inputs'", what="inputs", half=None):
    """The gradient's dtype from a ``grad_dtype`` argument: None (``dtype``), ``dtype``
    itself, or float32 when ``dtype`` is float16 / bfloat16 (``half``: whether it is, where
    ``dtype`` alone cannot say, as for bfloat16 bit patterns held in 16-bit integers)."""
    half = is_half(dtype) if half is None else half
    if grad_dtype is None:
        return np.dtype(dtype)
    wanted = None
    if isinstance(grad_dtype, (str, type, np.dtype)):
        try:
            wanted = np.dtype(grad_dtype)
        except (TypeError, ValueError):
            wanted = None
    if wanted is None:
        raise TypeError(f"grad_dtype: expected None or a dtype ({owner} dtype, or "
                        f"float32 for float16 / bfloat16 {what}), got {grad_dtype!r:.80}")
    if wanted == dtype or (half and wanted == np.float32):
        return wanted
    raise ValueError(f"grad_dtype: expected None, {owner} dtype ({dtype})"
                     f"{' or float32' if half else ''}, got {wanted}")


def rows_view(array, n_cols, written=False):
    """A 2-d (rows, n_cols) view of `array` whose last axis is contiguous, or None where
    that would need a copy (for out= buffers, which must be written in place), or where
    the array is misaligned (the kernels read and write aligned elements only).
    `written`: also None where the rows overlap (a zero or short row stride, as
    ``as_strided(..., writeable=True)`` makes): the kernel's threads would write the
    same memory at once, where a copy into it writes the rows one after another, as
    NumPy does."""
    if not array.flags.aligned:
        return None
    matrix = array.reshape(-1, n_cols)
    if matrix.size and not np.may_share_memory(matrix, array):  # reshape had to copy
        return None
    if n_cols > 1 and matrix.strides[1] != matrix.itemsize:
        return None
    if matrix.strides[0] % matrix.itemsize:
        return None
    if written and matrix.shape[0] > 1 and abs(matrix.strides[0]) < n_cols * matrix.itemsize:
        return None
    return matrix


def reduction_arg(reduction, extra=()):
    """``reduction`` if it is one of REDUCTIONS or of a loss's ``extra`` ones (kl_div's
    "batchmean"), else a ValueError naming the argument."""
    if not isinstance(reduction, str) or (reduction not in REDUCTIONS and reduction not in extra):
        raise ValueError(f"reduction: expected one of {REDUCTIONS + tuple(extra)}, "
                         f"got {reduction!r}")
    return reduction


def real_scalar(value, name, *, low=None, high=None, low_open=False, allow_none=False):
    """A finite Python float within [low, high] (low excluded when low_open)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real number, got {value!r}")
    number = _float_or_infinity(value)
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number <= high
    if not ok:
        bounds = (f"{'(' if low_open or low is None else '['}"
                  f"{low if low is not None else '-inf'}, "
                  f"{high if high is not None else 'inf'}{']' if high is not None else ')'}")
        raise ValueError(f"{name}: expected a finite value in {bounds}, got {value!r}")
    return number


def _float_or_infinity(value):
    """float(value), and an integer beyond float64's range (10**400) as the infinity of
    its sign, which the callers refuse naming the argument, instead of float's
    OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def integer_scalar(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {value!r}") from None


def real_grad_output(grad_output, name="grad_output"):
    """An upstream gradient (``name``: grad_output, grad_entropy) as a float64 array of any
    shape (real numbers only: integers and floats, ml_dtypes.bfloat16 too)."""
    if isinstance(grad_output, np.ndarray) and grad_output.dtype.kind not in "fiu" \
            and not is_bfloat16(grad_output.dtype):
        raise TypeError(f"{name}: expected real numbers, got dtype {grad_output.dtype}")
    if type(grad_output) is int and not -2**63 <= grad_output < 2**64:
        # an integer NumPy would hold only as an object: a float64 if it has one
        number = _float_or_infinity(grad_output)
        if not math.isfinite(number):
            raise ValueError(f"{name}: expected a finite number, got an integer of "
                             f"{len(str(abs(grad_output)))} digits")
        grad_output = number
    upstream = as_array(grad_output, name)
    # a string, None, a complex number, any object
    if upstream.dtype.kind not in "biuf" and not is_bfloat16(upstream.dtype):
        raise TypeError(f"{name}: expected a real number or an array of them, got "
                        f"{grad_output!r:.80}")
    return upstream.astype(np.float64, copy=False)


def grad_output_arg(grad_output, reduction, loss_shape):
    """grad_output as the float64 vector the kernels read: one value per row
    for reduction "none" (a scalar is broadcast), else a single value."""
    upstream = real_grad_output(grad_output)
    if reduction != "none" or upstream.ndim == 0:
        if upstream.ndim != 0:
            raise ValueError(f"grad_output: expected a scalar for reduction {reduction!r}, "
                             f"got shape {upstream.shape}")
        return upstream.reshape(1)
    if upstream.shape != tuple(loss_shape):
        raise ValueError(f"grad_output: expected shape {tuple(loss_shape)} (the per-sample "
                         f"loss) or a scalar, got {upstream.shape}")
    return np.require(upstream.reshape(-1), requirements="CA")  # aligned too


def out_arg(out, shape, dtype, name="out"):
    """Check a caller's out= buffer: an ndarray of this shape and dtype, writeable."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return out


def distinct_outs(out, names):
    """A ValueError naming both where two of the out= buffers ``out`` (one per name in
    ``names``) share memory: one buffer cannot hold two gradients, the later would
    overwrite the earlier."""
    for index, buffer in enumerate(out):
        for other in range(index):
            if (isinstance(buffer, np.ndarray) and isinstance(out[other], np.ndarray)
                    and buffer.size and np.may_share_memory(buffer, out[other])):
                raise ValueError(f"out: the buffers for {names[other]} and {names[index]} "
                                 f"share memory (each gradient needs its own)")


def outs_per_name(out, names, single):
    """The `out` of a function with `wrt` names, one entry (or None) per name: `out` itself
    for a single name, None for each, or a tuple with one array per name."""
    if single:
        return dict(zip(names, (out,)))
    if out is None:
        return dict.fromkeys(names)
    if isinstance(out, tuple) and len(out) == len(names):
        distinct_outs(out, names)
        return dict(zip(names, out))
    raise TypeError(f"out: expected a tuple of {len(names)} arrays (one per name in "
                    f"wrt), or None, got {type(out).__name__}")


def real_array(value, name):
    """`value` as an ndarray of real numbers (bool, integer or float dtype), else TypeError."""
    array = as_array(value, name)
    if array.dtype.kind not in "biuf" and not is_bfloat16(array.dtype):
        raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
    return array


def broadcast_to_shape(array, shape, name, what):
    """Check that `array` broadcasts to `shape` without enlarging it (ValueError naming
    `name` and `what` the shape belongs to otherwise)."""
    try:
        result = np.broadcast_shapes(array.shape, tuple(shape))
    except ValueError:
        result = None
    if result != tuple(shape):
        raise ValueError(f"{name}: shape {array.shape} does not broadcast to {what} "
                         f"{tuple(shape)}")
    return array


# Periods shorter than this are repeated up to it: the kernels read a periodic factor
# run by run, and runs this long keep their loops vectorised.
MIN_PERIOD = 1024


def periodic_factor(array, shape, dtype):
    """A factor that broadcasts to `shape` as one contiguous period of `dtype`.

    Element i (in C order) of the broadcast factor is ``period[i % len(period)]``:
    leading axes of length 1 are dropped, the rest is broadcast to the matching
    trailing axes of `shape` (so a per-class factor of C values over (..., C) data
    stays C values long), and a period shorter than MIN_PERIOD is repeated up to it.
    When `shape` has no elements nothing is read, but a loss whose kernel requires its
    factor (pinball's quantile, bradley_terry's margin) still gets one: a period of one
    zero. The caller has checked broadcasting.
    """
    if math.prod(shape) == 0:
        return np.zeros(1, dtype)
    factor = np.asarray(array)
    leading_ones = 0
    while leading_ones < factor.ndim and factor.shape[leading_ones] == 1:
        leading_ones += 1
    factor = factor.reshape(factor.shape[leading_ones:])
    trailing = tuple(shape[len(shape) - factor.ndim:]) if factor.ndim else ()
    period = np.require(np.broadcast_to(factor, trailing), dtype=dtype,
                        requirements="CA").reshape(-1)
    if period.size < MIN_PERIOD:
        period = np.tile(period, -(-MIN_PERIOD // period.size))
    return period


def positioned_error(template, position, **fields):
    """ValueError(template.format(position=position, **fields)), a message that names a
    position of the target (a tuple of ints), with what made it kept on the exception
    (``fastloss_position``): fastloss.dask names the position in the whole array by
    formatting the template again with the chunk's position moved."""
    error = ValueError(template.format(position=position, **fields))
    error.fastloss_position = (template, position, fields)
    return error


def flat_position(flat, shape):
    """The position (a tuple of ints) of flat index `flat` in an array of `shape`."""
    return tuple(int(index) for index in np.unravel_index(flat, shape)) if shape else ()


def target_out_of_range(value, flat, shape, n_classes, ignore_index):
    """The ValueError of a class index `value` (not ignore_index) outside [0, n_classes),
    at flat index `flat` of a target of `shape`."""
    return positioned_error("target: value {value} at position {position} is out of range "
                            "for {n_classes} classes (ignore_index={ignore_index})",
                            flat_position(flat, shape), value=int(value),
                            n_classes=n_classes, ignore_index=ignore_index)


def _address(array):
    return array.__array_interface__["data"][0]


def _sum_to_shape(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, down to `shape`
    (the gradient of a broadcast, as autograd computes it), in float64."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + axis for axis, size in enumerate(shape) if size == 1 and grad.shape[lead + axis] != 1)
    return np.asarray(grad.sum(axis=axes, dtype=np.float64)).reshape(shape)
