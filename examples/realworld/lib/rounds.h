/* The body of each part of libmix: a hundred mixing rounds, each its own function. The arithmetic
   and branching give gcc -O2 real work (inlining, unrolling, vectorising), so the dependency stage
   costs what a real library's build costs: seconds natively, a minute or more under QEMU. Each
   part.c defines PART (its salt) and MIX_PART (its exported name) before including this file. */
#include <stddef.h>
#include <stdint.h>

#define ROUND(n)                                                                      \
    static uint64_t round_##n(const uint8_t *p, size_t len, uint64_t h) {             \
        for (size_t i = 0; i < len; i++) {                                            \
            h ^= (uint64_t)p[i] * (0x9E3779B97F4A7C15ull + (n) + PART);               \
            h = (h << ((n) % 31 + 1)) | (h >> (63 - (n) % 31));                       \
            if ((h & 0xff) == (n)) h += (uint64_t)(n) * 0x100000001B3ull;             \
            else if (h % 3 == 0) h -= (h >> 7) ^ (n);                                 \
            else h *= 0xff51afd7ed558ccdull;                                          \
        }                                                                             \
        uint64_t acc[8] = {0};                                                        \
        for (int k = 0; k < 64; k++) acc[k % 8] += (h >> (k % 64)) * (k + (n));      \
        for (int k = 0; k < 8; k++) h ^= acc[k] + k * (n);                            \
        return h;                                                                     \
    }
#define ROUNDS10(n) ROUND(n##0) ROUND(n##1) ROUND(n##2) ROUND(n##3) ROUND(n##4) \
                    ROUND(n##5) ROUND(n##6) ROUND(n##7) ROUND(n##8) ROUND(n##9)
ROUNDS10(1) ROUNDS10(2) ROUNDS10(3) ROUNDS10(4) ROUNDS10(5)
ROUNDS10(6) ROUNDS10(7) ROUNDS10(8) ROUNDS10(9) ROUNDS10(10)

#define CALL(n) h = round_##n(p, len, h);
#define CALLS10(n) CALL(n##0) CALL(n##1) CALL(n##2) CALL(n##3) CALL(n##4) \
                   CALL(n##5) CALL(n##6) CALL(n##7) CALL(n##8) CALL(n##9)

uint64_t MIX_PART(const uint8_t *p, size_t len, uint64_t h) {
    CALLS10(1) CALLS10(2) CALLS10(3) CALLS10(4) CALLS10(5)
    CALLS10(6) CALLS10(7) CALLS10(8) CALLS10(9) CALLS10(10)
    return h;
}
