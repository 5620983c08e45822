/* libmix: a small hashing library, the slow-to-build dependency of the realworld example. */
#ifndef MIX_H
#define MIX_H
#include <stddef.h>
#include <stdint.h>

/* The version string linked into every program built against this copy of the library. */
#define MIX_VERSION "libmix 1.0"

/* A 64-bit hash of `len` bytes at `data`. */
uint64_t mix_hash(const void *data, size_t len);

#endif
