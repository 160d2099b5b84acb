/*
 * box_instance.h -- the box kernels of one storage type, like a C template:
 * box_impl.h defines STORAGE (the storage tag, storage.h), BOX_NAME (the dtype's
 * part of the names: the half types' _wide tags are named for their dtype) and,
 * for float32 only, BOX_NARROW (box_body.h's float32 pass), then includes this
 * header, which instantiates box_body.h under the names
 * BOX(name) = fastloss_box_<name>_<BOX_NAME>_<FASTLOSS_ISA> and
 * RUN = fastloss_box_run_<BOX_NAME>_<FASTLOSS_ISA>, and undefines its parameters.
 * FL_BOX_PASTE is box_impl.h's.  No include guard, on purpose.
 */
#include "storage_begin.h"
#define BOX(name) FL_BOX_PASTE(fastloss_box_##name, BOX_NAME, FASTLOSS_ISA)
#define RUN FL_BOX_PASTE(fastloss_box_run, BOX_NAME, FASTLOSS_ISA)
#include "box_body.h"
#undef BOX_NARROW
#undef BOX_NAME
#undef BOX
#undef RUN
#include "storage_end.h"
