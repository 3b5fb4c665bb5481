/* hal-setup: what the host has done in a qemu sandbox each time it starts, as root, in one
 * static process (under TCG every extra dynamically linked program costs ~40 ms).
 *
 * usage: hal-setup EPOCH PIDS_MAX [9p TAG TARGET ro|rw | bind SOURCE TARGET | adopt UID DIR]...
 *
 * 1. Mixes what arrives on stdin (host entropy, at most 4 KiB) into the kernel's pool:
 *    guests restored from one saved VM state would otherwise share its RNG state.
 * 2. Sets the clock to EPOCH (seconds since 1970, with an optional fraction).
 * 3. Writes PIDS_MAX into the commands' cgroup (/sys/fs/cgroup/hal/pids.max).
 * 4. Mounts each virtio-9p share TAG on TARGET (read-only with "ro"), then makes each
 *    bind mount, in the order given; targets are created as needed.
 * 5. "adopt UID DIR" (a root hal's sandbox, which runs commands as UID) hands every entry
 *    under DIR, DIR included, owned by neither root nor UID to UID:UID: links are changed,
 *    never followed, and the walk never leaves DIR's filesystem (what "find DIR -xdev ! -uid
 *    0 ! -uid UID -exec chown -h UID:UID {} +" did, without its two execs; a mount point
 *    under DIR is left whole, its root included).
 *
 * Any failure prints "hal-setup: WHAT ARG: REASON" and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NINEP_OPTIONS "trans=virtio,version=9p2000.L,msize=512000"

static void fail(const char *what, const char *arg) {
    fprintf(stderr, "hal-setup: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: hal-setup EPOCH PIDS_MAX "
                    "[9p TAG TARGET ro|rw | bind SOURCE TARGET | adopt UID DIR]...\n");
    exit(1);
}

static void mix_entropy(void) {
    char buf[4096];
    size_t have = 0;
    ssize_t n;
    while (have < sizeof buf && (n = read(0, buf + have, sizeof buf - have)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("cannot read entropy from", "stdin");
        }
        have += (size_t)n;
    }
    if (have == 0) return;
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, buf, have) != (ssize_t)have) fail("cannot write", "/dev/urandom");
    close(fd);
}

static void set_clock(const char *epoch) {
    char *end;
    errno = 0;
    double seconds = strtod(epoch, &end);
    if (errno || *end || seconds < 0) {
        errno = EINVAL;
        fail("bad EPOCH", epoch);
    }
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) fail("cannot set the clock to", epoch);
}

static void write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) fail("cannot write", path);
    close(fd);
}

static void make_dirs(const char *target) {
    char path[4096];
    if (strlen(target) >= sizeof path) {
        errno = ENAMETOOLONG;
        fail("cannot create", target);
    }
    strcpy(path, target);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) fail("cannot create", path);
            *p = saved;
            if (saved == '\0') break;
        }
    }
}

static uid_t adopt_uid;

static int adopt_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (type == FTW_NS) fail("cannot stat", path);
    if (type == FTW_DNR) fail("cannot read", path);
    if (st->st_uid != 0 && st->st_uid != adopt_uid && lchown(path, adopt_uid, adopt_uid) != 0)
        fail("cannot chown", path);
    return 0;
}

static void adopt(const char *uid, const char *dir) {
    char *end;
    errno = 0;
    unsigned long value = strtoul(uid, &end, 10);
    if (errno || *end || !*uid || uid[0] == '-' || value == 0 || value >= UINT_MAX) {
        errno = EINVAL;
        fail("bad UID", uid);
    }
    adopt_uid = (uid_t)value;
    if (nftw(dir, adopt_entry, 32, FTW_PHYS | FTW_MOUNT) != 0) fail("cannot walk", dir);
}

int main(int argc, char **argv) {
    if (argc < 3 || argv[1][0] == '-') usage();
    mix_entropy();
    set_clock(argv[1]);
    write_text("/sys/fs/cgroup/hal/pids.max", argv[2]);
    for (int i = 3; i < argc;) {
        if (strcmp(argv[i], "9p") == 0 && i + 3 < argc) {
            const char *tag = argv[i + 1], *target = argv[i + 2], *mode = argv[i + 3];
            unsigned long flags = strcmp(mode, "ro") == 0 ? MS_RDONLY : 0;
            if (!flags && strcmp(mode, "rw") != 0) usage();
            make_dirs(target);
            if (mount(tag, target, "9p", flags, NINEP_OPTIONS) != 0) fail("cannot mount", tag);
            i += 4;
        } else if (strcmp(argv[i], "bind") == 0 && i + 2 < argc) {
            const char *source = argv[i + 1], *target = argv[i + 2];
            make_dirs(target);
            if (mount(source, target, NULL, MS_BIND, NULL) != 0) fail("cannot bind", source);
            i += 3;
        } else if (strcmp(argv[i], "adopt") == 0 && i + 2 < argc) {
            adopt(argv[i + 1], argv[i + 2]);
            i += 3;
        } else {
            usage();
        }
    }
    return 0;
}
