/*
 * hal-launch SANDBOX SECCOMP_FILE FSIZE_BLOCKS [JOIN_FILE...] -- PROGRAM [ARG...]
 *
 * What hal's launcher script (LAUNCHER_SCRIPT in src/hal9999/providers/hostexec.py) does
 * before every sandbox command, as one small static program: no shell, no dynamic loader,
 * so a command starts ~0.5 ms sooner (built by scripts/setup.sh with musl-gcc -static, ~0.8 ms:
 * glibc's static start-up alone costs ~0.3 ms). Without it hal runs the script with /bin/sh.
 * It runs on the host with hal's own rights, and only ever executes bwrap (or the network
 * wiring's launcher), named by path.
 *
 * In order: HAL_SANDBOX=SANDBOX in the environment; SECCOMP_FILE (if not empty) opened
 * read-only as fd 9 for bwrap's --seccomp; any one file capped at FSIZE_BLOCKS 512-byte
 * blocks (if not empty; soft and hard limit, as `ulimit -f`); "0" (this process) written to
 * each JOIN_FILE (a cgroup's tasks or cgroup.procs file); then PROGRAM is executed (PATH
 * searched). Any failure before the exec exits 125 without running PROGRAM, so a command
 * never runs outside its cgroups or without its limits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define SECCOMP_FD 9
#define FSIZE_BLOCK 512ULL

static void die(const char *what, const char *name) {
  fprintf(stderr, "hal-launch: %s %s: %s\n", what, name, strerror(errno));
  _exit(125);
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: hal-launch SANDBOX SECCOMP FSIZE [JOIN...] -- PROGRAM [ARG...]\n");
    return 125;
  }
  if (setenv("HAL_SANDBOX", argv[1], 1) != 0) die("setenv", "HAL_SANDBOX");

  if (argv[2][0]) {
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) die("open", argv[2]);
    if (fd != SECCOMP_FD) {
      if (dup2(fd, SECCOMP_FD) != SECCOMP_FD) die("dup2", argv[2]);
      close(fd);
    }
  }

  if (argv[3][0]) {
    char *end = NULL;
    errno = 0;
    unsigned long long blocks = strtoull(argv[3], &end, 10);
    if (errno || end == argv[3] || *end || argv[3][0] == '-' || blocks == 0 ||
        blocks > RLIM_INFINITY / FSIZE_BLOCK) {
      fprintf(stderr, "hal-launch: bad file size limit %s\n", argv[3]);
      return 125;
    }
    struct rlimit limit = {blocks * FSIZE_BLOCK, blocks * FSIZE_BLOCK};
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) die("setrlimit", argv[3]);
  }

  int i = 4;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    /* "0" is the writer itself. This process has one thread, so writing it to a v1
     * hierarchy's tasks file moves the whole process, and the kernel skips the global lock
     * that a cgroup.procs write takes (an RCU grace period, ~10 ms, after an idle spell). */
    int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open", argv[i]);
    if (write(fd, "0", 1) != 1) die("write", argv[i]);
    if (close(fd) != 0) die("close", argv[i]);
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "hal-launch: no -- PROGRAM\n");
    return 125;
  }

  execvp(argv[i + 1], argv + i + 1);
  int saved = errno;
  fprintf(stderr, "hal-launch: failed to execute %s: %s\n", argv[i + 1], strerror(saved));
  return saved == ENOENT ? 127 : 126;
}
