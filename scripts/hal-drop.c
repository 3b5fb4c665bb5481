/*
 * hal-drop UID -- PROGRAM [ARG...]
 *
 * What `setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all --bounding-set=-all --`
 * does for a root hal's bwrap sandbox (src/hal9999/providers/sandboxuser.py), as one small
 * static program: no dynamic loader, no locale, no NSS, so a command starts ~2 ms sooner.
 * Built by scripts/setup.sh (musl-gcc -static when there, whose start-up costs ~0.3 ms less
 * than glibc's; else gcc -static); without it hal runs setpriv.
 *
 * Every step is checked, and checked again at the end: any failure exits 125 without
 * running PROGRAM, so a command never runs with more than the sandbox uid's rights.
 */
#define _GNU_SOURCE
#define DROP_NAME "hal-drop"
#include "hal-drop.h" /* drop_uid, drop_to, exec_path: shared with hal-launch --enter --uid */

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: hal-drop UID -- PROGRAM [ARG...]\n");
    return 125;
  }
  drop_to(drop_uid(argv[1]));
  exec_path(argv + 3);
  int saved = errno;
  fprintf(stderr, "hal-drop: failed to execute %s: %s\n", argv[3], strerror(saved));
  return saved == ENOENT ? 127 : 126;
}
