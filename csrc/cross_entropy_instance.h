/*
 * cross_entropy_instance.h -- the cross-entropy kernels of one storage type, like a
 * C template: cross_entropy_impl.h defines
 *   STORAGE        the storage tag (storage.h)
 *   CE_NAME        the tag's part of the row routines' names (f32, f64, bfloat16, ...)
 *   CE_OWN_DOUBLE  1 when the tag computes in double (float64), 0 in float
 * and includes this header, which instantiates, with ROW(name) =
 * name_<compute>_<CE_NAME>_<FASTLOSS_ISA>:
 *   - the rows computed in the tag's own type from the stored logits: (VAL, ROW_IN)
 *     = (float, STORAGE), or (double, STORAGE) for float64; cross_entropy_row_body.h
 *     and cross_entropy_small_body.h;
 *   - unless those are already double, the wide rows, computed in double from the
 *     row widened (or soft-capped) into float64 scratch: (double, float64);
 *     cross_entropy_row_body.h;
 *   - the runner RUN = fastloss_ce_run_<STORAGE>_<FASTLOSS_ISA>
 *     (cross_entropy_internal.h), cross_entropy_body.h, whose ROW_SAME and ROW_WIDE
 *     are the two sets of rows (both the own rows for float64);
 * and undefines its parameters.  FL_PASTE3 is cross_entropy_impl.h's.  No include
 * guard, on purpose.
 */
#include "storage_begin.h"

#if CE_OWN_DOUBLE
#define CE_OWN f64
#else
#define CE_OWN f32
#endif

/* the rows in the tag's own compute type */
#if CE_OWN_DOUBLE
#define VAL double
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#elif FASTLOSS_STORAGE_IS_COMPUTE(STORAGE)
#define VAL float
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#ifdef FASTLOSS_ISA_AVX512
/* float rows, a float gradient: the small path transposes them in registers */
#define CE_SMALL_FLOAT_AVX512 1
#endif
#else
/* the half types: half the bytes of float32 for the same exps, so the exp bounds them;
 * fastloss_expf5 is two vector operations shorter and as accurate (fastmath.h) */
#define VAL float
#define VAL_EXP fastloss_expf5
#define VAL_EXP_NONPOSITIVE fastloss_expf5_nonpositive
#endif
#define ROW_IN STORAGE
#define STORE_VAL STORE
#define ROW(name) FL_PASTE3(name, CE_OWN, CE_NAME, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#undef CE_SMALL_FLOAT_AVX512

/* the wide rows (double, from float64 scratch) */
#if !CE_OWN_DOUBLE
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, CE_NAME, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#endif

/* the runner */
#define RUN FASTLOSS_CE_RUN_NAME(STORAGE, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, STORAGE, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, STORAGE, run, FASTLOSS_ISA)
#define RUN_FAR_SCRATCH FL_PASTE3(ce_far_scratch, STORAGE, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, CE_OWN, CE_NAME, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, CE_NAME, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef RUN_FAR_SCRATCH
#undef ROW_SAME
#undef ROW_WIDE

#undef CE_OWN
#undef CE_OWN_DOUBLE
#undef CE_NAME
#include "storage_end.h"
