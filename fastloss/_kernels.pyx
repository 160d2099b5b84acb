# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The only module that knows both C and Python: it checks the buffers the C
kernels will touch (dtype, shape, strides, writeability, index ranges),
releases the GIL and calls them.  Argument parsing and friendly errors live in
the Python API; the checks here are the ones memory safety depends on."""

import os

import numpy

cimport numpy as cnp
from libc.math cimport INFINITY
from libc.stdint cimport int64_t, uint16_t

from fastloss._validation import (as_array, distinct_outs, flat_position, float_array,
                                  grad_dtype_arg, grad_output_arg, integer_scalar, is_bfloat16,
                                  out_arg, positioned_error, real_grad_output, real_scalar,
                                  reduction_arg, rows_view, target_out_of_range)

from fastloss._common cimport *

cnp.import_array()
fastloss_simd_level()  # detect the CPU's SIMD level now, before any threads

REDUCTIONS = {"none": FASTLOSS_REDUCTION_NONE, "sum": FASTLOSS_REDUCTION_SUM,
              "mean": FASTLOSS_REDUCTION_MEAN}


def build_info():
    """Facts of this build and CPU, for fastloss.show_config()."""
    return {
        "compiler": fastloss_compiler().decode(),
        "openmp": bool(fastloss_openmp_enabled()),
        "openmp_max_threads": fastloss_openmp_max_threads(),
        "simd_path": fastloss_simd_path().decode(),
    }


def set_simd_path(str name):
    """Force the SIMD path ("baseline", "avx2" or "avx512"); ValueError if this CPU
    or build cannot run it.  Not safe while another thread runs a kernel."""
    if fastloss_set_simd_path(name.encode()) != 0:
        raise ValueError(f"simd path {name!r} is not available on this CPU or build")


cdef inline int _check_float(cnp.ndarray array, int typenum, str name) except -1:
    """dtype `typenum` (float32, float64 or int64), aligned, native byte order."""
    # a typed ndarray argument also accepts None, whose dtype would be read from
    # memory that is not an array's
    if array is None:
        raise TypeError(f"{name}: expected an array, got None")
    if cnp.PyArray_TYPE(array) != typenum:
        raise TypeError(f"{name}: expected dtype {cnp.PyArray_DescrFromType(typenum)}, "
                        f"got {array.dtype}")
    if not cnp.PyArray_ISALIGNED(array) or cnp.PyArray_ISBYTESWAPPED(array):
        raise ValueError(f"{name}: expected an aligned array in native byte order")
    return 0


# ml_dtypes' bfloat16 is a user-defined NumPy dtype, numbered when ml_dtypes registers
# it: its number is learnt from the first such dtype seen (fastloss never imports
# ml_dtypes, an optional dependency).
cdef int _bfloat16_typenum = -1


cdef bint _is_bfloat16(object dtype):
    """Whether `dtype` is ml_dtypes.bfloat16 (and remember its type number)."""
    global _bfloat16_typenum
    if _bfloat16_typenum >= 0:
        return dtype.num == _bfloat16_typenum
    if is_bfloat16(dtype):
        _bfloat16_typenum = dtype.num
        return True
    return False


# The kernels' dtype codes (csrc/storage.h: enum fastloss_dtype), the one place that
# maps a NumPy dtype to the storage type a C entry point is called with.  A new
# storage type is one line here.
cdef inline int _storage_code(int typenum) noexcept nogil:
    """The dtype code of NumPy type number `typenum`, or -1 when no kernel stores it."""
    if typenum == cnp.NPY_FLOAT32:
        return FASTLOSS_FLOAT32
    if typenum == cnp.NPY_FLOAT64:
        return FASTLOSS_FLOAT64
    if typenum == cnp.NPY_FLOAT16:
        return FASTLOSS_FLOAT16
    if typenum == _bfloat16_typenum and typenum >= 0:
        return FASTLOSS_BFLOAT16
    return -1


cdef inline int _dtype_code(cnp.ndarray array, str name) except -1:
    """The dtype code of `array` (a float array the kernels store); TypeError naming
    the argument otherwise."""
    cdef int code = _storage_code(cnp.PyArray_TYPE(array))
    if code < 0 and _is_bfloat16(array.dtype):
        code = FASTLOSS_BFLOAT16
    if code < 0:
        raise TypeError(f"{name}: expected float32 or float64, got {array.dtype}")
    return code


cdef inline bint _is_half_code(int code) noexcept nogil:
    return code == FASTLOSS_BFLOAT16 or code == FASTLOSS_FLOAT16


cdef inline int _grad_float32_code(int code) noexcept nogil:
    """The code of the half type `code` with its gradient in float32."""
    return (FASTLOSS_BFLOAT16_GRAD_FLOAT32 if code == FASTLOSS_BFLOAT16
            else FASTLOSS_FLOAT16_GRAD_FLOAT32)


cdef inline int _check_status(int status, str what) except -1:
    """Raise for a kernel's failure status (csrc/common.h), naming the loss."""
    if status == FASTLOSS_ERROR_NO_MEMORY:
        raise MemoryError(f"{what}: could not allocate scratch space")
    if status == FASTLOSS_ERROR_BAD_DTYPE:
        raise TypeError(f"{what}: no kernel for this dtype")
    return 0


cdef inline fastloss_index _row_stride(cnp.ndarray array, fastloss_index n_rows,
                                       fastloss_index n_cols, str name,
                                       bint writeable=False) except? -1:
    """Row stride in elements of a 2-d array with a contiguous last axis."""
    if array is None:
        raise TypeError(f"{name}: expected an array, got None")
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(array)
    if cnp.PyArray_NDIM(array) != 2 or array.shape[0] != n_rows or array.shape[1] != n_cols:
        raise ValueError(f"{name}: expected shape ({n_rows}, {n_cols}), got {(<object>array).shape}")
    if n_cols > 1 and array.strides[1] != itemsize:
        raise ValueError(f"{name}: the last axis must be contiguous")
    if array.strides[0] % itemsize != 0:
        raise ValueError(f"{name}: row stride is not a multiple of the item size")
    if writeable and not cnp.PyArray_ISWRITEABLE(array):
        raise ValueError(f"{name}: array is read-only")
    if writeable and n_rows > 1 and abs(array.strides[0]) < n_cols * itemsize:
        raise ValueError(f"{name}: its rows overlap (row stride {array.strides[0]} bytes): "
                         f"each row needs memory of its own")
    return array.strides[0] // itemsize


cdef inline int _check_vector(cnp.ndarray array, int typenum, fastloss_index n, str name,
                              bint writeable=False) except -1:
    """A contiguous 1-d array of n elements."""
    _check_float(array, typenum, name)
    if cnp.PyArray_NDIM(array) != 1 or array.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {(<object>array).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(array):
        raise ValueError(f"{name}: expected a contiguous array")
    if writeable and not cnp.PyArray_ISWRITEABLE(array):
        raise ValueError(f"{name}: array is read-only")
    return 0


cdef bint _may_overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory extents of a and b intersect (conservative)."""
    return numpy.may_share_memory(a, b)


# Output buffers at least this large come from fastloss_alloc_large (2 MiB-aligned,
# huge pages advised): a fresh N x C gradient otherwise pays a page fault per 4 KiB at
# its first touch, and the kernel's zeroing of every page, about as much time as a copy
# of the logits.  Smaller ones are np.empty's, which malloc serves from its free lists.
LARGE_BUFFER_BYTES = 4 << 20

# Huge pages take the faults away but not the zeroing of fresh pages (measured: a fused
# call into a fresh buffer still cost 1.5x the call into a warm one).  So the block of the
# last large buffer freed is kept for the next request of about its size: a training step
# asks for the same gradient every step, and then touches no fresh page.  One block, at
# most an eighth of the machine's memory; fastloss.release_memory() gives it back.
cdef void *_spare_data = NULL
cdef size_t _spare_size = 0
cdef int _spare_mapped = 0
cdef bint _spare_huge = False


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


# a C variable: __dealloc__ may run at interpreter exit, after module globals are gone
cdef size_t _spare_limit = _physical_memory() // 8
SPARE_LIMIT_BYTES = _spare_limit


cdef class _LargeBuffer:
    """Owns one fastloss_alloc_large block; the base object of the array viewing it."""
    cdef void *data
    cdef size_t size
    cdef int mapped
    cdef readonly bint huge_pages
    cdef readonly bint reused

    def __dealloc__(self):
        global _spare_data, _spare_size, _spare_mapped, _spare_huge
        if self.size <= _spare_limit and self.size >= _spare_size:
            # keep the larger of the two blocks
            fastloss_free_large(_spare_data, _spare_size, _spare_mapped)
            _spare_data, _spare_size = self.data, self.size
            _spare_mapped, _spare_huge = self.mapped, self.huge_pages
        else:
            fastloss_free_large(self.data, self.size, self.mapped)


def release_memory():
    """Give back the large block fastloss keeps for its next output of about its size.

    fastloss keeps the block of the last large output buffer (a gradient of at least 4
    MiB) that was freed, at most an eighth of the machine's memory, so that the next
    call's output of about that size touches no fresh page (a training step's gradient
    is the same size every step).  Returns the number of bytes given back."""
    global _spare_data, _spare_size, _spare_mapped
    cdef size_t size = _spare_size
    fastloss_free_large(_spare_data, _spare_size, _spare_mapped)
    _spare_data, _spare_size, _spare_mapped = NULL, 0, 0
    return size


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, from fastloss_alloc_large when it is large (or from
    the kept block of the last one freed, when that is at least as large and at most
    twice the size)."""
    global _spare_data, _spare_size
    dtype = numpy.dtype(dtype)
    shape = tuple(shape)
    cdef size_t n = 1
    for extent in shape:
        n *= <size_t>extent
    cdef size_t size = n * <size_t>dtype.itemsize
    if size < LARGE_BUFFER_BYTES:
        return numpy.empty(shape, dtype)
    cdef _LargeBuffer owner = _LargeBuffer.__new__(_LargeBuffer)
    cdef int huge = 0
    if _spare_data != NULL and size <= _spare_size <= 2 * size:
        owner.data, owner.size, owner.mapped = _spare_data, _spare_size, _spare_mapped
        owner.huge_pages, owner.reused = _spare_huge, True
        _spare_data, _spare_size = NULL, 0
    else:
        owner.data = fastloss_alloc_large(size, &owner.mapped, &huge)
        if owner.data == NULL:
            release_memory()
            owner.data = fastloss_alloc_large(size, &owner.mapped, &huge)
        if owner.data == NULL:
            raise MemoryError(f"could not allocate {size} bytes")
        owner.size = size
        owner.huge_pages = huge
    cdef cnp.npy_intp dims[64]
    for axis, extent in enumerate(shape):
        dims[axis] = extent
    cdef cnp.ndarray array = cnp.PyArray_SimpleNewFromData(len(shape), dims, dtype.num,
                                                           owner.data)
    cnp.set_array_base(array, owner)
    return array


include "_cross_entropy.pxi"
include "_elementwise.pxi"
include "_contrastive.pxi"
include "_box.pxi"
include "_vocab.pxi"
include "_sequence.pxi"
include "_half.pxi"
