/*
 * elementwise_instance.h -- the elementwise kernels of one storage type, like a C
 * template: elementwise_impl.h defines STORAGE (the storage tag, storage.h) and,
 * where the tag computes in float, EW_FLOAT_COMPUTE (float64: EW_SIGN_TEST), then
 * includes this header,
 * which instantiates elementwise_body.h under the names
 * EW(name) = fastloss_ew_<name>_<STORAGE>_<FASTLOSS_ISA> and
 * RUN = fastloss_ew_run_<STORAGE>_<FASTLOSS_ISA> (and, computed in float or
 * float64, MAY_BE_NEGATIVE = fastloss_ew_may_be_negative_<STORAGE>_<FASTLOSS_ISA>:
 * the sign test of the sums elementwise.c may redo), and undefines its parameters.
 * FL_EW_PASTE is elementwise_impl.h's.  No include guard, on purpose.
 */
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, STORAGE, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, STORAGE, FASTLOSS_ISA)
#if defined(EW_FLOAT_COMPUTE) || defined(EW_SIGN_TEST)
#define MAY_BE_NEGATIVE FL_EW_PASTE(fastloss_ew_may_be_negative, STORAGE, FASTLOSS_ISA)
#endif
#include "elementwise_body.h"
#undef EW_FLOAT_COMPUTE
#undef EW_SIGN_TEST
#undef EW
#undef RUN
#undef MAY_BE_NEGATIVE
#include "storage_end.h"
