/*
 * expf_bounded_error.c -- the largest relative error of fastloss_expf_bounded
 * (csrc/fastmath.h) against libm's double exp over every float in [-80, 80], the
 * range its callers use it on (FASTLOSS_EXPF_BOUNDED_REL_ERROR bounds it).  Build
 * and run both ways, with and without FMA contraction:
 *   gcc -O2 -mavx2 -mfma -Icsrc tests/tools/expf_bounded_error.c -lm && ./a.out
 *   gcc -O2 -Icsrc tests/tools/expf_bounded_error.c -lm && ./a.out
 * (about a minute each on one core).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fastmath.h"

int main(void)
{
    double worst = 0.0;
    float worst_at = 0.0f;
    const float limit = 80.0f;
    uint32_t end;
    memcpy(&end, &limit, sizeof end);
    for (int negative = 0; negative < 2; ++negative) {
        const uint32_t sign = negative ? 0x80000000u : 0u;
        for (uint32_t bits = 0;; ++bits) {
            const uint32_t word = bits | sign;
            float x;
            memcpy(&x, &word, sizeof x);
            const double exact = exp((double)x);
            const double error = fabs((double)fastloss_expf_bounded(x) - exact) / exact;
            if (error > worst) {
                worst = error;
                worst_at = x;
            }
            if (bits == end)
                break;
        }
    }
    printf("worst relative error %.4g (%.3f x 2**-24) at x = %.9g\n", worst,
           worst / 0x1p-24, (double)worst_at);
    return worst <= FASTLOSS_EXPF_BOUNDED_REL_ERROR ? 0 : 1;
}
