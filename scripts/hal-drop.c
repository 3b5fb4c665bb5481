/*
 * hal-drop UID -- PROGRAM [ARG...]
 * hal-drop UID --wait
 *
 * What `setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all --bounding-set=-all --`
 * does for a root hal's bwrap sandbox (src/hal9999/providers/host/user.py), as one small
 * static program: no dynamic loader, no locale, no NSS, so a command starts ~2 ms sooner.
 * Built by scripts/setup.sh (musl-gcc -static when there, whose start-up costs ~0.3 ms less
 * than glibc's; else gcc -static); without it hal runs setpriv.
 *
 * Every step is checked, and checked again at the end: any failure exits 125 without
 * running PROGRAM, so a command never runs with more than the sandbox uid's rights.
 *
 * --wait, after the same switch, waits for a signal to end it, running nothing: a pooled
 * sandbox's keeper (src/hal9999/providers/bwrap/keeper.py), which ran `sleep infinity`, one exec
 * (and a dynamic loader's start) more for every keeper, one a task. Switched, it closes every fd
 * above 2: what bwrap passed on, among them the pipe whose end of file tells the launcher
 * that started the keeper that it is up (scripts/hal-launch.c, --keep), rather than its
 * reading /proc every 0.2 ms until the keeper is there.
 */
#define _GNU_SOURCE
#define DROP_NAME "hal-drop"
#include "hal-drop.h" /* drop_uid, drop_to, exec_path: shared with hal-launch --enter --uid */

/* hal looks for this before it passes --wait (a build without it refuses the option). */
__attribute__((used)) const char hal_drop_abi_wait[] = "hal-drop abi: wait-closes";

/* Close every fd above 2 (close_range, Linux 5.9; before it, one by one up to the limit). */
static void close_above_stderr(void) {
  if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
  long max = sysconf(_SC_OPEN_MAX);
  for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close((int)fd);
}

int main(int argc, char **argv) {
  int wait = argc == 3 && strcmp(argv[2], "--wait") == 0;
  if (!wait && (argc < 4 || strcmp(argv[2], "--") != 0)) {
    fprintf(stderr, "usage: hal-drop UID -- PROGRAM [ARG...] | hal-drop UID --wait\n");
    return 125;
  }
  drop_to(drop_uid(argv[1]));
  if (wait) close_above_stderr(); /* switched: up, as the launcher that waits for it says */
  while (wait) pause();
  exec_path(argv + 3);
  int saved = errno;
  fprintf(stderr, "hal-drop: failed to execute %s: %s\n", argv[3], strerror(saved));
  return saved == ENOENT ? 127 : 126;
}
