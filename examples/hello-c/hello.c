#include <stdio.h>

int main(void) {
    /* __FILE__ would embed the build path; -ffile-prefix-map (Makefile) rewrites it. */
    printf("hello from %s\n", __FILE__);
    return 0;
}
