/*
 * dtype_table.h -- a family's kernel table over the dtype codes of storage.h, and its
 * refill for a SIMD level: one place for what each family (cross_entropy.c, vocab.c)
 * would otherwise write out slot by slot.  A family whose runners are named
 * <prefix>_<tag>_<isa>, for the tags float32, float64, bfloat16, float16,
 * bfloat16_grad32 and float16_grad32 and the ISAs of FASTLOSS_PICK, writes
 *     static run_type table[FASTLOSS_N_DTYPES] = FASTLOSS_DTYPE_TABLE(prefix);
 *     ... FASTLOSS_DTYPE_TABLE_SELECT(table, prefix, level);   (its _select(level))
 * A new storage type is one line in each macro.
 */
#ifndef FASTLOSS_DTYPE_TABLE_H
#define FASTLOSS_DTYPE_TABLE_H

#include "common.h"
#include "storage.h"

/* The table's initial value: the baseline runner of every dtype code. */
#define FASTLOSS_DTYPE_TABLE(prefix)                                                        \
    {                                                                                       \
        [FASTLOSS_FLOAT32] = prefix##_float32_baseline,                                     \
        [FASTLOSS_FLOAT64] = prefix##_float64_baseline,                                     \
        [FASTLOSS_BFLOAT16] = prefix##_bfloat16_baseline,                                   \
        [FASTLOSS_FLOAT16] = prefix##_float16_baseline,                                     \
        [FASTLOSS_BFLOAT16_GRAD_FLOAT32] = prefix##_bfloat16_grad32_baseline,               \
        [FASTLOSS_FLOAT16_GRAD_FLOAT32] = prefix##_float16_grad32_baseline,                 \
    }

/* Every slot of `table` set to the widest build of its runner that `level` allows. */
#define FASTLOSS_DTYPE_TABLE_SELECT(table, prefix, level)                                   \
    do {                                                                                    \
        (table)[FASTLOSS_FLOAT32] = FASTLOSS_PICK(prefix##_float32, level);                 \
        (table)[FASTLOSS_FLOAT64] = FASTLOSS_PICK(prefix##_float64, level);                 \
        (table)[FASTLOSS_BFLOAT16] = FASTLOSS_PICK(prefix##_bfloat16, level);               \
        (table)[FASTLOSS_FLOAT16] = FASTLOSS_PICK(prefix##_float16, level);                 \
        (table)[FASTLOSS_BFLOAT16_GRAD_FLOAT32] =                                           \
            FASTLOSS_PICK(prefix##_bfloat16_grad32, level);                                 \
        (table)[FASTLOSS_FLOAT16_GRAD_FLOAT32] = FASTLOSS_PICK(prefix##_float16_grad32, level); \
    } while (0)

#endif /* FASTLOSS_DTYPE_TABLE_H */
