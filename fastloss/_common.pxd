# Declarations of csrc/common.h shared by every kernel family.
from libc.stdint cimport int64_t

cdef extern from "common.h" nogil:
    ctypedef int64_t fastloss_index
    enum:
        FASTLOSS_REDUCTION_NONE
        FASTLOSS_REDUCTION_SUM
        FASTLOSS_REDUCTION_MEAN
        FASTLOSS_OK
        FASTLOSS_ERROR_NO_MEMORY
        FASTLOSS_ERROR_BAD_TARGET
        FASTLOSS_ERROR_BAD_DTYPE
    double fastloss_sum_float64(const double *values, fastloss_index n)
    void *fastloss_alloc_large(size_t bytes, int *mapped, int *huge_pages)
    void fastloss_free_large(void *pointer, size_t bytes, int mapped)
    int fastloss_openmp_enabled()
    int fastloss_openmp_max_threads()
    const char *fastloss_compiler()
    int fastloss_simd_level()
    const char *fastloss_simd_path()
    int fastloss_set_simd_path(const char *name)

cdef extern from "storage.h" nogil:
    enum fastloss_dtype:
        FASTLOSS_FLOAT32
        FASTLOSS_FLOAT64
        FASTLOSS_BFLOAT16
        FASTLOSS_FLOAT16
        FASTLOSS_BFLOAT16_GRAD_FLOAT32
        FASTLOSS_FLOAT16_GRAD_FLOAT32
