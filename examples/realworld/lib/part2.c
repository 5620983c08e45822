/* Part 2 of libmix; see rounds.h. */
#define PART 2
#define MIX_PART mix_part2
#include "rounds.h"
