/*
 * cross_entropy_impl.h -- instantiates the generic bodies for float32 and
 * float64 under the name suffix FASTLOSS_ISA: baseline in cross_entropy.c,
 * avx2 and avx512 in cross_entropy_avx2.c / _avx512.c (between
 * isa_*_begin.h and isa_end.h).  No include guard, on purpose.
 */
#include <math.h>
#include <stdlib.h>

#include "cross_entropy_internal.h"
#include "fastmath.h"

#define FL_PASTE3_(a, b, c, d) a##_##b##_##c##_##d
#define FL_PASTE3(a, b, c, d) FL_PASTE3_(a, b, c, d)
#define FL_RUN_NAME_(real_tag, isa) fastloss_ce_run_##real_tag##_##isa
#define FL_RUN_NAME(real_tag, isa) FL_RUN_NAME_(real_tag, isa)

/* Row routines: (VAL, REAL) = (float, float), (double, double), (double, float). */
#define VAL float
#define REAL float
#define VAL_EXP fastloss_expf
#define VAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define ROW(name) FL_PASTE3(name, f32, f32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef REAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW

#define VAL double
#define REAL double
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#include "cross_entropy_small_body.h"
#undef VAL
#undef REAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW

#define VAL double
#define REAL float
#define VAL_EXP fastloss_exp
#define VAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define ROW(name) FL_PASTE3(name, f64, f32, FASTLOSS_ISA)
#include "cross_entropy_row_body.h"
#undef VAL
#undef REAL
#undef VAL_EXP
#undef VAL_EXP_NONPOSITIVE
#undef ROW

/* Runners. */
#define REAL float
#define RUN FL_RUN_NAME(float32, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float32, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float32, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f32, f32, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, f32, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef REAL
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE

#define REAL double
#define RUN FL_RUN_NAME(float64, FASTLOSS_ISA)
#define RUN_ROWS FL_PASTE3(ce_rows, float64, run, FASTLOSS_ISA)
#define RUN_JOB FL_PASTE3(ce_job, float64, run, FASTLOSS_ISA)
#define ROW_SAME(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#define ROW_WIDE(name) FL_PASTE3(name, f64, f64, FASTLOSS_ISA)
#include "cross_entropy_body.h"
#undef REAL
#undef RUN
#undef RUN_ROWS
#undef RUN_JOB
#undef ROW_SAME
#undef ROW_WIDE
