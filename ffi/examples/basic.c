/*
 * basic.c: the smallest useful writewatch program.
 *
 * Allocate watched memory, write to it, ask which pages were written (and
 * reset them in the same call), free it.
 *
 *   cc -Iinclude basic.c -Ltarget/release -lwritewatch -o basic
 *   LD_LIBRARY_PATH=target/release ./basic
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "writewatch.h"

#define PAGES 16

int main(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    /* Zeroed memory, watched from the start, no page written yet. */
    char *mem = ww_alloc(PAGES * page);
    if (mem == NULL) {
        perror("ww_alloc");
        return 1;
    }

    mem[3 * page] = 'a';                 /* page 3 */
    memcpy(mem + 9 * page - 2, "abcd", 4); /* "ab" ends page 8, "cd" starts 9 */

    /* Room for every page: a full array means "there may be more". */
    void *written[PAGES];
    uintptr_t count = PAGES;
    uint32_t granularity;
    int err = ww_get_write_watch(WW_FLAG_RESET, mem, PAGES * page, written,
                                 &count, &granularity);
    if (err != 0) {
        fprintf(stderr, "ww_get_write_watch: %s\n", strerror(err));
        return 1;
    }

    printf("%lu pages written:", (unsigned long)count);
    for (uintptr_t i = 0; i < count; i++)
        printf(" %zu", (size_t)((char *)written[i] - mem) / granularity);
    printf("\n"); /* 3 pages written: 3 8 9 */

    /* WW_FLAG_RESET cleared them: asking again reports nothing. */
    count = PAGES;
    if (ww_get_write_watch(0, mem, PAGES * page, written, &count,
                           &granularity) != 0)
        return 1;
    printf("after the reset: %lu pages written\n", (unsigned long)count);

    return ww_free(mem) == 0 ? 0 : 1;
}
