/* Part 4 of libmix; see rounds.h. */
#define PART 4
#define MIX_PART mix_part4
#include "rounds.h"
