/* Part 3 of libmix; see rounds.h. */
#define PART 3
#define MIX_PART mix_part3
#include "rounds.h"
