/* The program of the hello-image example: a static binary (the image has nothing else) that
   prints the greeting file laid beside it, so `docker run` shows both outputs at work. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *path = getenv("GREETING_FILE");
    FILE *f = fopen(path ? path : "/app/share/hello/greeting.txt", "r");
    int c;
    if (f == NULL) {
        perror("greeting");
        return 1;
    }
    while ((c = getc(f)) != EOF)
        putchar(c);
    return fclose(f) == 0 ? 0 : 1;
}
