/*
 * test_kernel_write: the kernel writing into watched memory on our behalf.
 *
 * With the mprotect backend an unwritten page is read-only, and a read(2)
 * into it fails with EFAULT instead of faulting into our handler (the kernel
 * does not deliver SIGSEGV for its own copy_to_user).  The contract is that
 * ww_prepare_kernel_write() first marks the pages written, after which the
 * syscall succeeds on every backend and the pages are reported.
 */
#include <stdint.h>
#include <sys/socket.h>

#include "ww_test.h"

#define PAGES 16

static size_t ps;

/* Put `len` bytes of `msg` in a fresh pipe, read(2) them into dst. */
static ssize_t pipe_read_into(char *dst, const char *msg, size_t len)
{
    int fds[2];
    ssize_t got;

    if (pipe(fds) != 0)
        tap_bail("pipe: %s", strerror(errno));
    if (write(fds[1], msg, len) != (ssize_t)len)
        tap_bail("write to pipe: %s", strerror(errno));
    int rc = ww_prepare_kernel_write(dst, len);
    if (rc != 0)
        tap_rc(rc, 0, "ww_prepare_kernel_write");
    got = read(fds[0], dst, len);
    if (got < 0)
        tap_diag("  read(2): %s", strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return got;
}

static void test_read_into_page(char *base)
{
    const char msg[] = "written by the kernel";
    char *dst = base + 3 * ps + 100;

    tap_ok(pipe_read_into(dst, msg, sizeof(msg)) == (ssize_t)sizeof(msg),
           "read(2) into an unwritten watched page succeeds");
    tap_ok(memcmp(dst, msg, sizeof(msg)) == 0, "the data arrived");
    tap_expect("the page is reported", WW_FLAG_RESET, base, PAGES, "3");

    /* After a reset the page is "unwritten" again (re-protected for
     * mprotect): the same dance must work a second time. */
    tap_ok(pipe_read_into(dst, "again", 6) == 6,
           "read(2) into the same page after a reset");
    tap_expect("reported again", WW_FLAG_RESET, base, PAGES, "3");
}

static void test_read_across_pages(char *base)
{
    char msg[64];
    char *dst = base + 6 * ps - 32; /* 32 bytes in page 5, 32 in page 6 */

    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (char)('a' + i % 26);
    tap_ok(pipe_read_into(dst, msg, sizeof(msg)) == (ssize_t)sizeof(msg),
           "read(2) across a page boundary");
    tap_ok(memcmp(dst, msg, sizeof(msg)) == 0, "the data arrived intact");
    tap_expect("both pages are reported", WW_FLAG_RESET, base, PAGES, "5 6");
}

/* recv(2) on a socket goes through the same kernel copy path. */
static void test_recv(char *base)
{
    int sv[2];
    const char msg[] = "datagram";
    char *dst = base + 12 * ps;

    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0)
        tap_bail("socketpair: %s", strerror(errno));
    if (send(sv[0], msg, sizeof(msg), 0) != (ssize_t)sizeof(msg))
        tap_bail("send: %s", strerror(errno));
    tap_rc(ww_prepare_kernel_write(dst, sizeof(msg)), 0,
           "ww_prepare_kernel_write before recv");
    tap_ok(recv(sv[1], dst, sizeof(msg), 0) == (ssize_t)sizeof(msg) &&
               memcmp(dst, msg, sizeof(msg)) == 0,
           "recv(2) into watched memory");
    tap_expect("recv's page is reported", WW_FLAG_RESET, base, PAGES, "12");
    close(sv[0]);
    close(sv[1]);
}

/* "marks every watched page of the range as written": even with no write. */
static void test_prepare_marks_written(char *base)
{
    tap_rc(ww_prepare_kernel_write(base + 10 * ps + 5, 1), 0,
           "ww_prepare_kernel_write of one byte");
    tap_expect("a prepared page counts as written", WW_FLAG_RESET, base,
               PAGES, "10");
    /* A range running past the region (into the guard page and beyond)
     * still returns 0 and marks only what is watched. */
    tap_rc(ww_prepare_kernel_write(base + (PAGES - 1) * ps, 3 * ps), 0,
           "ww_prepare_kernel_write past the region end");
    tap_expect("only the watched page is marked", WW_FLAG_RESET, base, PAGES,
               "15");
}

int main(void)
{
    tap_start("test_kernel_write");
    tap_require_backend();
    ps = tap_page_size();

    char *base = tap_alloc_or_skip(PAGES * ps);
    test_read_into_page(base);
    test_read_across_pages(base);
    test_recv(base);
    test_prepare_marks_written(base);
    tap_rc(ww_free(base), 0, "ww_free");
    return tap_done();
}
