"""The embedding losses' shared argument handling (fastloss.contrastive and
fastloss._info_nce): rows and their dtypes, the gradients' targets and dtypes, the
half types' rounding, the metric argument."""
import numpy as np

from fastloss import _kernels
from fastloss._validation import (
    float_array,
    grad_dtype_arg,
    is_bfloat16,
    is_half,
    out_arg,
    promote_float,
    rows_view,
)


METRICS = ("euclidean", "sqeuclidean", "cosine")


def _embeddings(value, name):
    array = float_array(value, name, half=True)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (N, D), got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one feature, got shape {array.shape}")
    if array.shape[1] > 1 and array.strides[1] != array.itemsize:
        array = np.ascontiguousarray(array)
    if array.strides[0] % array.itemsize:
        array = np.ascontiguousarray(array)
    return array


def _embedding_set(named, *, same_rows=True):
    """Check and convert named embedding inputs; returns (arrays in the common dtype,
    the inputs' own dtypes, the common dtype)."""
    arrays = [_embeddings(value, name) for name, value in named]
    first_name, first = named[0][0], arrays[0]
    for (name, _), array in zip(named[1:], arrays[1:]):
        if array.shape[1] != first.shape[1]:
            raise ValueError(f"{name}: expected {first.shape[1]} features (the D of "
                             f"{first_name}), got shape {array.shape}")
        if same_rows and array.shape[0] != first.shape[0]:
            raise ValueError(f"{name}: expected {first.shape[0]} rows (the N of {first_name}), "
                             f"got shape {array.shape}")
    dtypes = [array.dtype for array in arrays]
    dtype = _common_dtype(dtypes)
    arrays = [array if array.dtype == dtype else array.astype(dtype) for array in arrays]
    return arrays, dtypes, dtype


def _common_dtype(dtypes):
    """The dtype a call computes in: the inputs' one dtype, else their promotion
    (float16 with bfloat16, and a half type with float32, give float32)."""
    dtype = dtypes[0]
    for other in dtypes[1:]:
        if other != dtype:
            dtype = promote_float(dtype, other)
    return np.dtype(dtype)


def _value_dtype(dtype):
    """The dtype of the values (losses, distances) of a call computed in `dtype`: float32
    for the half types (the losses meet the float32 contract), else `dtype`."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if is_half(dtype) else dtype


def _grad_dtypes(grad_dtype, dtypes):
    """The gradients' dtypes: each input's (``grad_dtype`` None, or that dtype), or
    float32 (``grad_dtype="float32"``) for float16 / bfloat16 inputs."""
    return [grad_dtype_arg(grad_dtype, dtype) for dtype in dtypes]


def _kernel_grad_dtype(dtype, grad_dtypes):
    """The dtype the kernels write the gradients of a call computed in `dtype` in: that
    dtype, or float32 for half inputs whose gradients are all wanted in float32."""
    if is_half(dtype) and all(grad == np.float32 for grad in grad_dtypes):
        return np.dtype(np.float32)
    return dtype


def _half_kind(dtype):
    return "bfloat16" if is_bfloat16(dtype) else "float16"


def _round_into(target, source):
    """target[...] = source: into a half target rounded once (to nearest even) from the
    float32 or float64 values of source, else NumPy's same-kind copy."""
    if is_half(target.dtype) and source.dtype != target.dtype:
        values = np.ascontiguousarray(source, dtype=np.float64 if source.dtype == np.float64
                                      else np.float32).reshape(-1)
        bits = _kernels.half_store(_half_kind(target.dtype), values)
        target.view(np.uint16)[...] = bits.reshape(target.shape)
    else:
        np.copyto(target, source, casting="same_kind")


def _as_dtype(array, dtype):
    """`array` in `dtype` (a half dtype rounded once, as _round_into)."""
    if array.dtype == dtype:
        return array
    if is_half(dtype):
        result = np.empty(array.shape, dtype)
        _round_into(result, array)
        return result
    return array.astype(dtype)


def _metric_arg(metric):
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


def _loss_value(total, dtype):
    """A reduced loss: a Python float holding a value of `dtype` (float32 for the half
    types)."""
    return float(_value_dtype(dtype).type(total))


def _grad_targets(out, shapes, dtypes, inputs, name="out"):
    """For each gradient: (the array to return, the array the kernel writes, copy back?).

    ``out`` is None, an ndarray (one gradient) or a tuple of them. The kernel writes into
    a caller's buffer when its rows are laid out for it and it shares no memory with an
    input; otherwise into a fresh array that is then copied.
    """
    count = len(shapes)
    if out is None:
        arrays = [np.empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]
        return [(array, array, False) for array in arrays]
    if count == 1 and isinstance(out, np.ndarray):
        out = (out,)
    if not isinstance(out, tuple) or len(out) != count:
        expected = "an ndarray" if count == 1 else f"a tuple of {count} ndarrays"
        raise TypeError(f"{name}: expected {expected}, got {type(out).__name__}")
    for index, buffer in enumerate(out):
        label = name if count == 1 else f"{name}[{index}]"
        out_arg(buffer, shapes[index], dtypes[index], label)
        for other in out[:index]:
            if np.may_share_memory(buffer, other):
                raise ValueError(f"{label}: shares memory with another out= buffer")
    targets = []
    for buffer, shape, dtype in zip(out, shapes, dtypes):
        view = rows_view(buffer, shape[1], written=True) if buffer.size else buffer
        usable = view is not None and not any(
            np.may_share_memory(buffer, a) for a in inputs if isinstance(a, np.ndarray))
        if usable:
            targets.append((buffer, view, False))
        else:
            targets.append((buffer, np.empty(shape, dtype=dtype), True))
    return targets


def _finish_targets(targets):
    """Copy gradients computed aside into their out= buffers; return what to hand back."""
    results = []
    for returned, written, copy in targets:
        if copy:
            _round_into(returned, written)
        results.append(returned)
    return results


def _kernel_outputs(targets, dtype):
    """The arrays the kernels write the gradients of `targets` (_grad_targets) in: each
    target's own array where it has the kernels' dtype `dtype`, else a fresh one."""
    return [t[1] if t[1].dtype == dtype else np.empty(t[1].shape, dtype) for t in targets]


def _copy_back(targets, written):
    """Gradients the kernels wrote aside into their targets (rounded once to a half
    target's dtype)."""
    for (_, target, _), result in zip(targets, written):
        if result is not target:
            _round_into(target, result)

