/*
 * hal-drop UID -- PROGRAM [ARG...]
 *
 * What `setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all --bounding-set=-all --`
 * does for a root hal's bwrap sandbox (src/hal9999/providers/sandboxuser.py), as one small
 * static program: no dynamic loader, no locale, no NSS, so a command starts ~2 ms sooner.
 * Built by scripts/setup.sh (gcc -static); without it hal runs setpriv.
 *
 * Every step is checked, and checked again at the end: any failure exits 125 without
 * running PROGRAM, so a command never runs with more than the sandbox uid's rights.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "hal-drop: %s: %s\n", what, strerror(errno));
  _exit(125);
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: hal-drop UID -- PROGRAM [ARG...]\n");
    return 125;
  }
  char *end = NULL;
  errno = 0;
  unsigned long parsed = strtoul(argv[1], &end, 10);
  if (errno || end == argv[1] || *end || argv[1][0] == '-' || parsed == 0 ||
      parsed >= 0xffffffffUL) {
    fprintf(stderr, "hal-drop: bad uid %s\n", argv[1]);
    return 125;
  }
  uid_t uid = (uid_t)parsed;

  if (setgroups(0, NULL) != 0) die("setgroups");
  if (setresgid(uid, uid, uid) != 0) die("setresgid");
  /* The bounding set first: dropping needs CAP_SETPCAP, which the uid change takes away. */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) die("bounding set");
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    die("ambient capabilities");
  /* Leaving uid 0 (no keep-caps) clears the permitted and effective sets. */
  if (setresuid(uid, uid, uid) != 0) die("setresuid");
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) != 0) die("capset");

  /* Checked, not assumed. */
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || ru != uid || eu != uid || su != uid) die("uid check");
  if (getresgid(&rg, &eg, &sg) != 0 || rg != uid || eg != uid || sg != uid) die("gid check");
  if (getgroups(0, NULL) != 0) die("groups check");
  if (syscall(SYS_capget, &header, data) != 0) die("capget");
  for (int i = 0; i < 2; i++) {
    if (data[i].effective || data[i].permitted || data[i].inheritable) {
      errno = EPERM;
      die("capabilities check");
    }
  }
  for (int cap = 0; cap <= 63; cap++) {
    int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (in > 0) {
      errno = EPERM;
      die("bounding set check");
    }
  }

  execvp(argv[3], argv + 3);
  int saved = errno;
  fprintf(stderr, "hal-drop: failed to execute %s: %s\n", argv[3], strerror(saved));
  return saved == ENOENT ? 127 : 126;
}
