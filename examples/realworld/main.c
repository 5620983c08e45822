/* The app: one file built against libmix. The tests and the benchmark change APP_VERSION (a
   one-line edit) and look for the new string in the rebuilt binary. */
#include <stdio.h>
#include <string.h>
#include "mix.h"

#define APP_VERSION "realworld 1.0.0"

int main(int argc, char **argv) {
    const char *input = argc > 1 ? argv[1] : "archfarm";
    printf("%s (%s): mix(\"%s\") = %016llx\n", APP_VERSION, MIX_VERSION, input,
           (unsigned long long)mix_hash(input, strlen(input)));
    return 0;
}
