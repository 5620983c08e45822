/* libmix's one entry point: the parts run one after another over the same bytes. */
#include "mix.h"

uint64_t mix_part1(const uint8_t *p, size_t len, uint64_t h);
uint64_t mix_part2(const uint8_t *p, size_t len, uint64_t h);
uint64_t mix_part3(const uint8_t *p, size_t len, uint64_t h);
uint64_t mix_part4(const uint8_t *p, size_t len, uint64_t h);

uint64_t mix_hash(const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    h = mix_part1(p, len, h);
    h = mix_part2(p, len, h);
    h = mix_part3(p, len, h);
    return mix_part4(p, len, h);
}
