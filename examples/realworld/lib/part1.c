/* Part 1 of libmix; see rounds.h. */
#define PART 1
#define MIX_PART mix_part1
#include "rounds.h"
