/*
 * elementwise_impl.h -- instantiates elementwise_body.h for float32 and
 * float64 under the name suffix FASTLOSS_ISA (baseline, avx2, avx512).
 * Included once by elementwise.c and once by each of elementwise_avx2.c and
 * elementwise_avx512.c under their target pragmas.  No include guard, on purpose.
 */
#include <math.h>
#include <stdlib.h>

#include "elementwise_internal.h"
#include "fastmath.h"

#define FL_EW_PASTE_(name, real_tag, isa) name##_##real_tag##_##isa
#define FL_EW_PASTE(name, real_tag, isa) FL_EW_PASTE_(name, real_tag, isa)

#define REAL float
#define EW_INPUTS fastloss_ew_inputs_float32
#define EW_OUTPUTS fastloss_ew_outputs_float32
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float32, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float32, FASTLOSS_ISA)
#define EW_ABS fabsf
#define EW_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define EW_LOG1P_UNIT fastloss_log1pf_unit
#define EW_WIDE double
#define EW_WIDE_ABS fabs
#define EW_WIDE_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define EW_WIDE_LOG1P_UNIT fastloss_log1p_unit
#define EW_BCE_SLOPE_CHECK
#include "elementwise_body.h"
#undef EW_BCE_SLOPE_CHECK
#undef REAL
#undef EW_INPUTS
#undef EW_OUTPUTS
#undef EW
#undef RUN
#undef EW_ABS
#undef EW_EXP_NONPOSITIVE
#undef EW_LOG1P_UNIT
#undef EW_WIDE
#undef EW_WIDE_ABS
#undef EW_WIDE_EXP_NONPOSITIVE
#undef EW_WIDE_LOG1P_UNIT

#define REAL double
#define EW_INPUTS fastloss_ew_inputs_float64
#define EW_OUTPUTS fastloss_ew_outputs_float64
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float64, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float64, FASTLOSS_ISA)
#define EW_ABS fabs
#define EW_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define EW_LOG1P_UNIT fastloss_log1p_unit
#define EW_WIDE double
#define EW_WIDE_ABS fabs
#define EW_WIDE_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define EW_WIDE_LOG1P_UNIT fastloss_log1p_unit
#include "elementwise_body.h"
#undef REAL
#undef EW_INPUTS
#undef EW_OUTPUTS
#undef EW
#undef RUN
#undef EW_ABS
#undef EW_EXP_NONPOSITIVE
#undef EW_LOG1P_UNIT
#undef EW_WIDE
#undef EW_WIDE_ABS
#undef EW_WIDE_EXP_NONPOSITIVE
#undef EW_WIDE_LOG1P_UNIT

#undef FL_EW_PASTE_
#undef FL_EW_PASTE
