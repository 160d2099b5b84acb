/*
 * cross_entropy_impl.h -- instantiates the generic bodies per storage type
 * (storage.h: float32, float64, and the half types bfloat16 and float16 with
 * their gradient in the same type or, _grad32, in float32) under the name suffix FASTLOSS_ISA: baseline
 * in cross_entropy.c, avx2 and avx512 in cross_entropy_avx2.c / _avx512.c
 * (between isa_*_begin.h and isa_end.h).  A new storage type is one block of
 * row routines and one runner below (and its slot in cross_entropy.c's table).
 * No include guard, on purpose.
 */
#include <math.h>
#include <stdlib.h>

#include "cross_entropy_internal.h"
#include "fastmath.h"

#define FL_PASTE3_(a, b, c, d) a##_##b##_##c##_##d
#define FL_PASTE3(a, b, c, d) FL_PASTE3_(a, b, c, d)

/* Row routines, ROW(name) = name_<compute>_<storage>_<isa>: (VAL, STORAGE,
 * ROW_IN) = (float, float32, float32), (double, float64, float64), and
 * (double, float32, float64) for float32 rows read as double. */
#define STORAGE float32
#include "storage_begin.h"
#define VAL float
#define ROW_IN float32
#define STORE_VAL STORE
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, f32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float32
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, f32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

/* Runners, RUN = fastloss_ce_run_<storage>_<isa> (cross_entropy_internal.h). */
#define STORAGE float32
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(float32, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float32, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float32, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, f32, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, f32, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(float64, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float64, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float64, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

/* bfloat16: rows computed in float from the stored halves, and wide rows (double). */
#define STORAGE bfloat16
#include "storage_begin.h"
#define VAL float
#define ROW_IN bfloat16
#define STORE_VAL STORE
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, bfloat16, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE bfloat16
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, bfloat16, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE bfloat16
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(bfloat16, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, bfloat16, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, bfloat16, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, bfloat16, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, bfloat16, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

/* float16: rows computed in float from the stored halves, and wide rows (double). */
#define STORAGE float16
#include "storage_begin.h"
#define VAL float
#define ROW_IN float16
#define STORE_VAL STORE
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, float16, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float16
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, float16, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float16
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(float16, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float16, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float16, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, float16, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, float16, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

/* bfloat16_grad32: rows computed in float from the stored halves, and wide rows (double). */
#define STORAGE bfloat16_grad32
#include "storage_begin.h"
#define VAL float
#define ROW_IN bfloat16_grad32
#define STORE_VAL STORE
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, bfloat16_grad32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE bfloat16_grad32
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, bfloat16_grad32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE bfloat16_grad32
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(bfloat16_grad32, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, bfloat16_grad32, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, bfloat16_grad32, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, bfloat16_grad32, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, bfloat16_grad32, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

/* float16_grad32: rows computed in float from the stored halves, and wide rows (double). */
#define STORAGE float16_grad32
#include "storage_begin.h"
#define VAL float
#define ROW_IN float16_grad32
#define STORE_VAL STORE
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, float16_grad32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float16_grad32
#include "storage_begin.h"
#define VAL double
#define ROW_IN float64
#define STORE_VAL STORE_WIDE
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, float16_grad32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef ROW_IN
#undef STORE_VAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW
#include "storage_end.h"

#define STORAGE float16_grad32
#include "storage_begin.h"
#define RUN FASTLOSS_CE_RUN_NAME(float16_grad32, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float16_grad32, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float16_grad32, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, float16_grad32, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, float16_grad32, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
#include "storage_end.h"

#undef FL_PASTE3
#undef FL_PASTE3_
