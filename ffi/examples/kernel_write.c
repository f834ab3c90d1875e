/*
 * kernel_write.c: let a system call write into watched memory.
 *
 * Some backends (mprotect) keep unwritten pages read-only and learn about
 * writes from the page fault.  A write done by the kernel -- read(2),
 * recv(2), ... -- takes no such fault: it fails with EFAULT instead.  So
 * before handing watched memory to a syscall, tell the library with
 * ww_prepare_kernel_write(); it marks those pages written (they will be
 * reported, which is right: they are about to be written).  It costs little
 * on backends that do not need it, so call it unconditionally.
 *
 *   cc -Iinclude kernel_write.c -Ltarget/release -lwritewatch -o kernel_write
 *   LD_LIBRARY_PATH=target/release ./kernel_write
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "writewatch.h"

#define PAGES 4

int main(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *mem = ww_alloc(PAGES * page);
    int fds[2];

    if (mem == NULL || pipe(fds) != 0) {
        perror("setup");
        return 1;
    }
    const char msg[] = "hello from the kernel";
    if (write(fds[1], msg, sizeof(msg)) != (ssize_t)sizeof(msg)) {
        perror("write");
        return 1;
    }

    char *buf = mem + 2 * page; /* read into page 2 */
    ww_prepare_kernel_write(buf, sizeof(msg));
    ssize_t n = read(fds[0], buf, sizeof(msg));
    if (n != (ssize_t)sizeof(msg)) {
        perror("read");
        return 1;
    }
    printf("read(2) put \"%s\" into watched memory\n", buf);

    void *written[PAGES];
    uintptr_t count = PAGES;
    uint32_t granularity;
    if (ww_get_write_watch(WW_FLAG_RESET, mem, PAGES * page, written, &count,
                           &granularity) != 0)
        return 1;
    printf("pages written:");
    for (uintptr_t i = 0; i < count; i++)
        printf(" %zu", (size_t)((char *)written[i] - mem) / granularity);
    printf("\n"); /* pages written: 2 */

    close(fds[0]);
    close(fds[1]);
    return ww_free(mem) == 0 && count == 1 && written[0] == buf ? 0 : 1;
}
