/*
 * The uid switch of scripts/hal-drop.c, shared with scripts/hal-launch.c (whose --enter
 * --uid does it in the command's own process, one exec fewer): included by both, each
 * defining DROP_NAME (the program's name in its messages) first.
 *
 * drop_to(UID): what `setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all
 * --bounding-set=-all` does, every step checked and checked again at the end: any failure
 * exits 125, so nothing runs with more than UID's rights.
 * exec_path(ARGS): execvp as glibc does it (see below); returns only on failure.
 */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The kernel's capget/capset ABI (linux/capability.h), spelled out so that any libc's headers
 * build it. */
#define CAP_VERSION_3 0x20080522
struct cap_header {
  unsigned int version;
  int pid;
};
struct cap_data {
  unsigned int effective, permitted, inheritable;
};

static void drop_die(const char *what) {
  fprintf(stderr, DROP_NAME ": %s: %s\n", what, strerror(errno));
  _exit(125);
}

/* UID as hal-drop takes it: decimal, neither 0 nor beyond a uid_t's range; else exit 125. */
static uid_t drop_uid(const char *text) {
  char *end = NULL;
  errno = 0;
  unsigned long parsed = strtoul(text, &end, 10);
  if (errno || end == text || *end || text[0] == '-' || parsed == 0 || parsed >= 0xffffffffUL) {
    fprintf(stderr, DROP_NAME ": bad uid %s\n", text);
    _exit(125);
  }
  return (uid_t)parsed;
}

static void drop_to(uid_t uid) {
  if (setgroups(0, NULL) != 0) drop_die("setgroups");
  if (setresgid(uid, uid, uid) != 0) drop_die("setresgid");
  /* The bounding set first: dropping needs CAP_SETPCAP, which the uid change takes away. */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) drop_die("bounding set");
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    drop_die("ambient capabilities");
  /* Leaving uid 0 (no keep-caps) clears the permitted and effective sets. */
  if (setresuid(uid, uid, uid) != 0) drop_die("setresuid");
  struct cap_header header = {CAP_VERSION_3, 0};
  struct cap_data data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) != 0) drop_die("capset");

  /* Checked, not assumed. */
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || ru != uid || eu != uid || su != uid)
    drop_die("uid check");
  if (getresgid(&rg, &eg, &sg) != 0 || rg != uid || eg != uid || sg != uid)
    drop_die("gid check");
  if (getgroups(0, NULL) != 0) drop_die("groups check");
  if (syscall(SYS_capget, &header, data) != 0) drop_die("capget");
  for (int i = 0; i < 2; i++) {
    if (data[i].effective || data[i].permitted || data[i].inheritable) {
      errno = EPERM;
      drop_die("capabilities check");
    }
  }
  for (int cap = 0; cap <= 63; cap++) {
    int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (in > 0) {
      errno = EPERM;
      drop_die("bounding set check");
    }
  }
}

/* execv, and a file the kernel cannot execute (a script without #!) run by /bin/sh. */
static void exec_file(const char *path, char **args) {
  execv(path, args);
  if (errno != ENOEXEC) return;
  int n = 0;
  while (args[n]) n++;
  char **sh = calloc(n + 2, sizeof *sh);
  if (!sh) return;
  sh[0] = "/bin/sh";
  sh[1] = (char *)path;
  for (int i = 1; i < n; i++) sh[i + 1] = args[i];
  execv("/bin/sh", sh);
  free(sh);
  errno = ENOEXEC;
}

/* execvp as glibc does it (musl's runs no script without #!): PATH searched, an entry that
 * is not there or not a directory skipped, EACCES kept if nothing else ran. */
static void exec_path(char **args) {
  const char *file = args[0];
  if (!*file) {
    errno = ENOENT;
    return;
  }
  if (strchr(file, '/')) {
    exec_file(file, args);
    return;
  }
  const char *path = getenv("PATH");
  if (!path) path = "/bin:/usr/bin";
  size_t flen = strlen(file);
  int eacces = 0;
  for (const char *p = path;;) {
    const char *z = strchrnul(p, ':');
    size_t dlen = (size_t)(z - p);
    char buf[4096];
    if (dlen + flen + 2 <= sizeof buf) {
      memcpy(buf, p, dlen);
      size_t at = dlen ? dlen + 1 : 0; /* an empty entry is the current directory */
      if (dlen) buf[dlen] = '/';
      memcpy(buf + at, file, flen + 1);
      exec_file(buf, args);
      if (errno == EACCES)
        eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR)
        return;
    }
    if (!*z) break;
    p = z + 1;
  }
  errno = eacces ? EACCES : ENOENT;
}
