/*
 * sequence_instance.h -- one instantiation of sequence_body.h: sequence.c defines
 * STORAGE and SEQ_TAG (the same storage.h tag) before including it.  No include guard,
 * on purpose.
 */
#include "storage_begin.h"
#define SEQ(name) SEQ_PASTE(name, SEQ_TAG)
#include "sequence_body.h"
#undef SEQ
#include "storage_end.h"
#undef SEQ_TAG
