/*
 * hal-launch [--parent PARENT] [--data FD TEXT]...
 *            [--enter PID MNT_INO CWD SESSION [--uid UID] [--unsetenv NAME]...
 *                     [--attach SRC DST RO]...
 *                     [--else N BWRAP ARG...]]
 *            SANDBOX SECCOMP_FILE FSIZE_BLOCKS [JOIN_FILE...] -- PROGRAM [ARG...]
 * hal-launch [--parent PARENT] [--data FD TEXT]... --keep RECORD -- BWRAP [ARG...]
 * hal-launch --dies-with PARENT -- PROGRAM [ARG...]
 *
 * What hal's launcher script (LAUNCHER_SCRIPT in src/hal9999/providers/host/exec.py) does
 * before every sandbox command, as one small static program: no shell, no dynamic loader,
 * so a command starts ~0.5 ms sooner (built by scripts/setup.sh with musl-gcc -static, ~0.8 ms:
 * glibc's static start-up alone costs ~0.3 ms). Without it hal runs the script with /bin/sh.
 * It runs on the host with hal's own rights, and only ever executes bwrap (or the network
 * wiring's launcher), named by path, or with --dies-with hal's host git.
 *
 * --parent, first: PARENT is the hal that spawned this process. Once the cgroups are joined,
 * before anything runs (bwrap, the network wiring, or the command in a keeper's namespaces),
 * the death signal (SIGKILL) is set and PARENT checked to be this process's parent still: a
 * hal that died after the fork (its stop's cgroup kill and marker scan saw nothing of this
 * process: it was not yet in the cgroup, its marker not yet in an environment /proc shows)
 * means nothing runs (exit 137), and one that dies later kills this process, whatever it
 * has become by exec (bwrap keeps the signal, and the network wiring, and this process as
 * an entered command's monitor). With --keep, PARENT is checked before the keeper is
 * started, and no death signal is set: the keeper outlives hal, and this process must
 * live to record it.
 *
 * --data, first after --parent: FD (3 to 8) is the read end of a pipe that holds TEXT and a newline, and
 * nothing more (its write end closed), left open for PROGRAM: how bwrap's --file gets a
 * sandbox's own small files (its passwd and group) without a file on disk per sandbox.
 *
 * In order: HAL_SANDBOX=SANDBOX in the environment; SECCOMP_FILE (if not empty) opened
 * read-only as fd 9 for bwrap's --seccomp; any one file capped at FSIZE_BLOCKS 512-byte
 * blocks (if not empty; soft and hard limit, as `ulimit -f`); "0" (this process) written to
 * each JOIN_FILE (a cgroup's tasks or cgroup.procs file); then PROGRAM is executed (PATH
 * searched). Any failure before the exec exits 125 without running PROGRAM, so a command
 * never runs outside its cgroups or without its limits.
 *
 * --enter runs PROGRAM (the uid switch and the command; never bwrap) in the namespaces of a
 * sandbox's keeper: a bwrap sandbox running only `sleep`, made by hal while the sandbox
 * waits in the pool (src/hal9999/providers/bwrap/keeper.py), whose mount namespace holds every
 * mount bwrap would make for a command. PID is the keeper on the host; it must hold the
 * mount namespace MNT_INO, checked before and after its namespaces are opened, so a PID
 * reused by another process is refused. The command then gets what bwrap gives each one: a
 * PID namespace of its own (a minimal init as PID 1 reaps, with no capability and the filter
 * before the command starts; the command is PID 2), its own
 * copy of the mounts with a fresh /proc (its host-wide writers read-only), its own cgroup
 * namespace (rooted at the cgroups joined above); the keeper's network, IPC and UTS
 * namespaces (one per sandbox). Then, as bwrap does: a new session when SESSION is 1, CWD,
 * the variables named by --unsetenv unset, the bounding set cut to what the uid switch
 * needs, no_new_privs, the seccomp filter read from SECCOMP_FILE. With --uid, the command's
 * process switches to UID itself, as hal-drop does (scripts/hal-drop.h: groups cleared, the
 * whole bounding set, the ambient and every other set emptied, each step checked), before
 * no_new_privs and the filter, and PROGRAM is the command (execvp as glibc's, as hal-drop
 * runs it) rather than hal-drop: one exec fewer a command. This process stays
 * outside, waits and exits with the command's status (128+N for signal N), and its death
 * kills the command's whole PID namespace.
 *
 * --else gives the command's bwrap argv (N words: BWRAP and its arguments, the --data, the
 * filter on fd 9, the cgroups and the limit as without --enter) for a keeper that is gone
 * when this process opens its namespaces (ENOENT or ESRCH: it died, or was replaced by a reset
 * or a restart, after hal read its record): that command then runs under bwrap, as hal runs
 * every command once it finds a keeper dead, rather than failing. A live PID that is not the
 * keeper is still refused.
 *
 * --attach mounts SRC (a host directory, resolved here, outside) on DST in the keeper's
 * mount namespace itself, read-only when RO is 1, nosuid and nodev, over what was there
 * (detached first): how a pooled sandbox's keeper takes its next task's session (its
 * workspace and binds), as bwrap would bind them for each command.
 *
 * --keep starts a keeper: BWRAP (a bwrap argv with --info-fd 3, running `sleep`) in a session
 * of its own, not waited for (it outlives this process, which exits as soon as the keeper
 * is up), its stderr in RECORD.err; then writes "PID MNT_INO" of the keeper's command (bwrap's
 * PID 1 keeps the root it started with; its child has the sandbox's) to RECORD, atomically.
 * A keeper whose command is the uid switch waiting (`hal-drop UID --wait`, the last word
 * --wait) gets the write end of a pipe on fd 10 (READY_FD), which bwrap's monitor and PID 1
 * close and the switch closes once it waits: its end of file says the keeper is up, one
 * read of PID 1's children finds it. Any other command (`sleep`) keeps the fd it would get,
 * so for it PID 1's children are read every 0.2 ms until there is one, as for every keeper
 * before (~2-4 ms of CPU a keeper at a load of 14, the reads' and the wake-ups').
 *
 * --dies-with runs PROGRAM (a host git writing a task's checkout, src/hal9999/tasks/gitrepo.py)
 * so that it is killed when PARENT, the hal that spawned it, dies: the death signal (SIGKILL)
 * set, then PARENT checked to be this process's parent still (a hal that died before the
 * signal was set is seen here, and PROGRAM does not run: exit 137), then PROGRAM executed
 * (PATH searched), nothing else changed. What `setpriv --pdeathsig KILL -- sh -c '[ "$PPID" =
 * "$1" ] || exit 137; ...'` did, in one exec instead of two. A PROGRAM that is this launcher
 * itself (the same file: a supervisor's sandbox command, src/hal9999/process/supervisor.py)
 * is not executed again: this process goes on with its arguments as that exec would have
 * (nothing of this process's state is set yet but the death signal, which an exec keeps),
 * one exec fewer a run.
 */
#define _GNU_SOURCE
#define DROP_NAME "hal-launch"
#include "hal-drop.h" /* drop_uid, drop_to, exec_path (--enter --uid) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECCOMP_FD 9
#define READY_FD 10 /* --keep: see the top; above the --data fds and the filter's */
#define FSIZE_BLOCK 512ULL

/* A build that takes --enter (an older one would take the option for a sandbox name). */
__attribute__((used)) const char hal_launch_abi[] = "hal-launch abi: enter";
/* hal looks for this before it passes --data (hal runs the launcher script rather than a
 * build without it). */
__attribute__((used)) const char hal_launch_abi_data[] = "hal-launch abi: data";
/* ... and this before it passes --enter, which always carries --else (a build without it
 * would take --else for a sandbox name): without it, no keeper. */
__attribute__((used)) const char hal_launch_abi_else[] = "hal-launch abi: enter-else";
/* ... and this before it passes --dies-with (a build without it would take the option for a
 * sandbox name). */
__attribute__((used)) const char hal_launch_abi_dies[] = "hal-launch abi: dies-with";
/* ... and this before it passes --enter ... --uid (a build without it would take --uid for
 * the sandbox's name). */
__attribute__((used)) const char hal_launch_abi_uid[] = "hal-launch abi: enter-uid";
/* ... and this before it uses the build at all: every launch then carries --parent (a build
 * without it would take --parent for a sandbox name). */
__attribute__((used)) const char hal_launch_abi_parent[] = "hal-launch abi: parent";

static void die(const char *what, const char *name) {
  fprintf(stderr, "hal-launch: %s %s: %s\n", what, name, strerror(errno));
  _exit(125);
}

/* PARENT (--dies-with, --parent): a pid within pid_t's range (a long cut to one named another
 * process: 2^32 + a pid, that pid); 0 when it is not one. */
static pid_t parent_pid(const char *text) {
  char *end = NULL;
  errno = 0;
  long parent = strtol(text, &end, 10);
  if (errno || end == text || *end || parent < 1 || parent != (long)(pid_t)parent) return 0;
  return (pid_t)parent;
}

/* The death signal set, then PARENT checked: set before the check, so a parent that dies
 * after it kills this process, and one that died before is seen (exit 137, nothing run). */
static void dies_with_parent(pid_t parent) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die("prctl", "PR_SET_PDEATHSIG");
  if (getppid() != parent) _exit(137);
}

/* --data ------------------------------------------------------------------------------ */

#define DATA_MAX 4096 /* what any pipe holds without a reader, however few pages it has */

/* FD: a pipe already holding TEXT and a newline, its write end closed, open across exec. */
static void data(const char *fd_text, const char *text) {
  if (fd_text[0] < '3' || fd_text[0] > '8' || fd_text[1]) {
    fprintf(stderr, "hal-launch: bad data fd %s\n", fd_text);
    _exit(125);
  }
  int fd = fd_text[0] - '0';
  size_t len = strlen(text);
  if (len + 1 > DATA_MAX) {
    fprintf(stderr, "hal-launch: data for fd %d longer than %d bytes\n", fd, DATA_MAX);
    _exit(125);
  }
  int pipes[2];
  if (pipe2(pipes, O_CLOEXEC) != 0) die("pipe", fd_text);
  char buf[DATA_MAX];
  memcpy(buf, text, len);
  buf[len] = '\n';
  if (write(pipes[1], buf, len + 1) != (ssize_t)(len + 1)) die("write", fd_text);
  if (close(pipes[1]) != 0) die("close", fd_text);
  if (pipes[0] == fd) {
    if (fcntl(fd, F_SETFD, 0) != 0) die("fcntl", fd_text);
  } else {
    if (dup2(pipes[0], fd) != fd) die("dup2", fd_text); /* the copy is not close-on-exec */
    close(pipes[0]);
  }
}

/* --enter ----------------------------------------------------------------------------- */

/* The kernel ABIs musl's headers lack (linux/filter.h, linux/mount.h), spelled out as
 * hal-drop.c does capabilities; x86_64 and every other architecture share these numbers. */
struct sock_filter {
  unsigned short code;
  unsigned char jt, jf;
  unsigned int k;
};
struct sock_fprog {
  unsigned short len;
  struct sock_filter *filter;
};
struct mount_attr {
  unsigned long long attr_set, attr_clr, propagation, userns_fd;
};
#define SECCOMP_MODE_FILTER 2
#define SYS_OPEN_TREE 428
#define SYS_MOVE_MOUNT 429
#define SYS_MOUNT_SETATTR 442
#define OPEN_TREE_CLONE 1
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#define MOVE_MOUNT_F_EMPTY_PATH 0x4
#define MOUNT_ATTR_RDONLY 0x1
#define MOUNT_ATTR_NOSUID 0x2
#define MOUNT_ATTR_NODEV 0x4
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

/* Host-wide writers under /proc (bwrap.py's PROC_READ_ONLY). */
static const char *const PROC_READ_ONLY[] = {"sys", "sysrq-trigger", "irq", "bus", "fs", "acpi"};
/* What the uid switch needs (bwrap.py's DROP_CAPS): SETGID, SETUID, SETPCAP. */
static const int DROP_CAPS[] = {6, 7, 8};
#define MAX_ATTACH 64

struct enter {
  const char *pid, *ino, *cwd;
  int session;
  uid_t uid; /* --uid: the uid the command switches to itself (0: none, PROGRAM does) */
  char **fallback; /* --else: the command's bwrap argv, NULL-terminated */
  char **unset;
  int nunset;
  const char *attach_src[MAX_ATTACH], *attach_dst[MAX_ATTACH], *attach_ro[MAX_ATTACH];
  int attach_fd[MAX_ATTACH];
  int nattach;
  int mnt, net, ipc, uts;
  struct sock_filter filter[4096];
  struct sock_fprog prog;
};
static struct enter E;

static unsigned long long positive(const char *text, const char *what) {
  char *end = NULL;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 10);
  if (errno || end == text || *end || text[0] == '-' || value == 0) {
    fprintf(stderr, "hal-launch: bad %s %s\n", what, text);
    _exit(125);
  }
  return value;
}

static void seccomp_fd(const char *file);

/* The --data of the command line, applied by main() (bwrap) or by run_bwrap() (--else). */
static const char *DATA[6][2];
static int ndata;

static void apply_data(void) {
  for (int i = 0; i < ndata; i++) data(DATA[i][0], DATA[i][1]);
}

/* --else: the keeper is gone; the command runs under bwrap as without --enter (the cgroups
 * are joined and the limit set already). */
static void run_bwrap(const char *seccomp) {
  if (E.mnt > 0) close(E.mnt);
  if (E.net > 0) close(E.net);
  if (E.ipc > 0) close(E.ipc);
  if (E.uts > 0) close(E.uts);
  apply_data();
  seccomp_fd(seccomp);
  execvp(E.fallback[0], E.fallback);
  int saved = errno;
  fprintf(stderr, "hal-launch: failed to execute %s: %s\n", E.fallback[0], strerror(saved));
  _exit(saved == ENOENT ? 127 : 126);
}

/* The keeper's namespace NAME; a keeper that is gone (no such process, or one exiting) means
 * bwrap when --else gave its argv. */
static int open_ns(const char *name, const char *seccomp) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%s/ns/%s", E.pid, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && (errno == ENOENT || errno == ESRCH) && E.fallback) run_bwrap(seccomp);
  if (fd < 0) die("open", path);
  return fd;
}

static void check_keeper(int mnt) {
  struct stat st, own;
  if (fstat(mnt, &st) != 0) die("stat", "the keeper's mount namespace");
  if ((unsigned long long)st.st_ino != positive(E.ino, "namespace")) {
    fprintf(stderr, "hal-launch: process %s is not the sandbox's keeper\n", E.pid);
    _exit(125);
  }
  /* Never the host's own (a forged record): a keeper's namespaces are bwrap's. */
  if (stat("/proc/self/ns/mnt", &own) != 0) die("stat", "/proc/self/ns/mnt");
  if (own.st_ino == st.st_ino && own.st_dev == st.st_dev) {
    fprintf(stderr, "hal-launch: process %s shares the launcher's mount namespace\n", E.pid);
    _exit(125);
  }
}

static void check_not_own(int fd, const char *name) {
  struct stat st, own;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  if (fstat(fd, &st) != 0 || stat(path, &own) != 0) die("stat", path);
  if (own.st_ino == st.st_ino && own.st_dev == st.st_dev) {
    fprintf(stderr, "hal-launch: process %s shares the launcher's %s namespace\n", E.pid, name);
    _exit(125);
  }
}

/* Everything that needs the host's view: the keeper's namespaces, the filter, the trees to
 * attach. */
static void open_keeper(const char *seccomp) {
  positive(E.pid, "pid");
  E.mnt = open_ns("mnt", seccomp);
  check_keeper(E.mnt);
  E.net = open_ns("net", seccomp);
  E.ipc = open_ns("ipc", seccomp);
  E.uts = open_ns("uts", seccomp);
  check_not_own(E.net, "net");
  check_not_own(E.ipc, "ipc");
  check_not_own(E.uts, "uts");
  int again = open_ns("mnt", seccomp); /* still the keeper: none is another process's */
  check_keeper(again);
  close(again);
  if (seccomp[0]) {
    int fd = open(seccomp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open", seccomp);
    ssize_t got = read(fd, E.filter, sizeof E.filter);
    if (got <= 0 || got % (ssize_t)sizeof E.filter[0] || got == (ssize_t)sizeof E.filter) {
      errno = EINVAL;
      die("read", seccomp);
    }
    close(fd);
    E.prog.len = (unsigned short)(got / sizeof E.filter[0]);
    E.prog.filter = E.filter;
  }
}

static void open_attach(int i) {
  const char *src = E.attach_src[i], *ro = E.attach_ro[i];
  int fd = (int)syscall(SYS_OPEN_TREE, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC |
                                                          AT_RECURSIVE);
  if (fd < 0) die("open_tree", src);
  struct mount_attr attr = {MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0};
  if (strcmp(ro, "1") == 0) attr.attr_set |= MOUNT_ATTR_RDONLY;
  if (syscall(SYS_MOUNT_SETATTR, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0)
    die("mount_setattr", src);
  E.attach_fd[i] = fd;
}

static int status_of(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* PID 2: the command's own set-up, then PROGRAM once PID 1 has dropped everything (its byte on
 * DROPPED; an end of file without it means PID 1 failed, and nothing runs), so that no command
 * ever sees it privileged. */
static void run_command(char **program, int dropped) {
  if (E.session && setsid() < 0) die("setsid", "");
  if (chdir(E.cwd) != 0) die("chdir", E.cwd);
  for (int i = 0; i < E.nunset; i++) unsetenv(E.unset[i]);
  if (E.uid) drop_to(E.uid); /* every capability gone: the loop below finds none to drop */
  for (int cap = 0; cap <= 63 && !E.uid; cap++) {
    int keep = 0;
    for (size_t j = 0; j < sizeof DROP_CAPS / sizeof DROP_CAPS[0]; j++) keep |= cap == DROP_CAPS[j];
    if (!keep && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      die("drop", "bounding set");
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("set", "no_new_privs");
  if (E.prog.len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &E.prog, 0, 0) != 0)
    die("load", "seccomp filter");
  char byte;
  ssize_t got;
  while ((got = read(dropped, &byte, 1)) < 0 && errno == EINTR) {
  }
  if (got != 1) _exit(125);
  if (E.uid)
    exec_path(program);
  else
    execvp(program[0], program);
  int saved = errno;
  fprintf(stderr, "hal-launch: failed to execute %s: %s\n", program[0], strerror(saved));
  _exit(saved == ENOENT ? 127 : 126);
}

/* PID 1 of the command's PID namespace: into the keeper's namespaces, the attaches, the
 * command's own mounts, then a reaping init around PID 2. */
static void run_init(char **program, int alive) {
  /* The monitor (outside: getppid() is 0 here) holds the pipe's other end: gone, it died
   * before the death signal was set. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(125);
  struct pollfd hup = {alive, 0, 0};
  if (poll(&hup, 1, 0) != 0) _exit(125);
  close(alive);
  if (setns(E.net, CLONE_NEWNET) != 0) die("setns", "net");
  if (setns(E.ipc, CLONE_NEWIPC) != 0) die("setns", "ipc");
  if (setns(E.uts, CLONE_NEWUTS) != 0) die("setns", "uts");
  if (setns(E.mnt, CLONE_NEWNS) != 0) die("setns", "mnt"); /* root and cwd: the sandbox's */
  /* The keeper's mounts change only under a lock on its namespace's file, held
   * exclusively by a command attaching and shared by one copying them (the unshare below).
   * Without it, a command could copy the mounts while another has a target unmounted (its
   * program then missing: EACCES), or two attaches interleave and stack two mounts at a
   * target. Each target is cleared down to its mount point, whatever is stacked there,
   * before its mount. (A source unlinked on the host after its open_tree fails move_mount
   * with ENOENT: hal never replaces a file a keeper has bound.) */
  if (flock(E.mnt, E.nattach ? LOCK_EX : LOCK_SH) != 0) die("lock", "mount namespace");
  for (int i = 0; i < E.nattach; i++) {
    const char *dst = E.attach_dst[i];
    while (umount2(dst, MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
    }
    if (errno != EINVAL) die("umount", dst);
    if (syscall(SYS_MOVE_MOUNT, E.attach_fd[i], "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) != 0)
      die("move_mount", dst);
    close(E.attach_fd[i]);
  }
  if (unshare(CLONE_NEWNS | CLONE_NEWCGROUP) != 0) die("unshare", "mount namespace");
  if (flock(E.mnt, LOCK_UN) != 0) die("unlock", "mount namespace");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("mount", "private");
  unsigned long nx = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  if (mount("proc", "/proc", "proc", nx, NULL) != 0) die("mount", "/proc");
  for (size_t i = 0; i < sizeof PROC_READ_ONLY / sizeof PROC_READ_ONLY[0]; i++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%s", PROC_READ_ONLY[i]);
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0) {
      if (errno == ENOENT) continue;
      die("mount", path);
    }
    if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | nx, NULL) != 0)
      die("remount", path);
  }
  int dropped[2];
  if (pipe2(dropped, O_CLOEXEC) != 0) die("pipe", "");
  pid_t child = fork();
  if (child < 0) die("fork", "");
  if (child == 0) {
    close(dropped[1]);
    run_command(program, dropped[0]);
  }
  close(dropped[0]);
  /* From here this process only waits: as bwrap's reaper, uid 0 with no capability,
   * no_new_privs and the filter (the command cannot signal or trace it: another uid). */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) _exit(125);
  }
  struct {
    unsigned int version;
    int pid;
  } header = {0x20080522, 0};
  unsigned int none[6] = {0, 0, 0, 0, 0, 0};
  if (syscall(SYS_capset, &header, none) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    _exit(125);
  if (E.prog.len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &E.prog, 0, 0) != 0) _exit(125);
  if (write(dropped[1], "1", 1) != 1) _exit(125); /* PID 2 may run its command now */
  close(dropped[1]);
  for (;;) {
    int status;
    pid_t done = waitpid(-1, &status, 0);
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) _exit(125);
    if (done == child) _exit(status_of(status));
  }
}

static void enter(char **program) {
  if (unshare(CLONE_NEWPID) != 0) die("unshare", "pid namespace");
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) != 0) die("pipe", "");
  pid_t child = fork();
  if (child < 0) die("fork", "");
  if (child == 0) {
    close(alive[1]);
    run_init(program, alive[0]);
  }
  close(alive[0]);
  close(E.mnt);
  close(E.net);
  close(E.ipc);
  close(E.uts);
  for (int i = 0; i < E.nattach; i++) close(E.attach_fd[i]);
  int status;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) die("wait", "");
  }
  _exit(status_of(status));
}

/* Parses the --enter options in place; returns how many arguments they took. */
static int enter_options(int argc, char **argv) {
  if (argc < 6 || strcmp(argv[1], "--enter") != 0) return 0;
  E.pid = argv[2];
  E.ino = argv[3];
  E.cwd = argv[4];
  E.session = strcmp(argv[5], "1") == 0;
  int at = 6;
  if (at + 1 < argc && strcmp(argv[at], "--uid") == 0) {
    E.uid = drop_uid(argv[at + 1]);
    at += 2;
  }
  E.unset = argv + at; /* names are packed here, over the options already read */
  while (at + 1 < argc && strcmp(argv[at], "--unsetenv") == 0) {
    E.unset[E.nunset++] = argv[at + 1];
    at += 2;
  }
  while (at + 3 < argc && strcmp(argv[at], "--attach") == 0) {
    if (E.nattach == MAX_ATTACH) {
      fprintf(stderr, "hal-launch: more than %d mounts to attach\n", MAX_ATTACH);
      _exit(125);
    }
    E.attach_src[E.nattach] = argv[at + 1];
    E.attach_dst[E.nattach] = argv[at + 2];
    E.attach_ro[E.nattach++] = argv[at + 3];
    at += 4;
  }
  if (at + 2 < argc && strcmp(argv[at], "--else") == 0) {
    char *end = NULL;
    long n = strtol(argv[at + 1], &end, 10);
    if (*end || n < 1 || n > argc - at - 2) {
      fprintf(stderr, "hal-launch: bad --else count %s\n", argv[at + 1]);
      _exit(125);
    }
    /* A copy: main() writes over the last of these slots, and execvp needs the NULL. */
    E.fallback = calloc((size_t)n + 1, sizeof *E.fallback);
    if (!E.fallback) die("calloc", "--else");
    memcpy(E.fallback, argv + at + 2, (size_t)n * sizeof *E.fallback);
    at += 2 + (int)n;
  }
  return at - 1;
}

/* --keep: start a keeper, detached, and record it. ------------------------------------- */

/* Read bwrap's --info-fd JSON up to its closing brace: {"child-pid": N, ...}. */
static long info_pid(int fd) {
  char buf[1024];
  size_t got = 0;
  while (got < sizeof buf - 1 && !memchr(buf, '}', got)) {
    ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  buf[got] = 0;
  const char *at = strstr(buf, "\"child-pid\":");
  return at ? strtol(at + strlen("\"child-pid\":"), NULL, 10) : 0;
}

static long first_child(long pid) {
  char path[64], buf[64];
  snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", pid, pid);
  for (int round = 0; round < 50000; round++) { /* 10 s */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) {
      buf[n] = 0;
      return strtol(buf, NULL, 10);
    }
    struct timespec wait = {0, 200000};
    nanosleep(&wait, NULL);
  }
  return 0;
}

/* Wait for the end of file on FD (every holder of its write end gone), at most 10 s. */
static void wait_closed(int fd) {
  struct pollfd ready = {fd, POLLIN, 0};
  /* Nothing is ever written: anything but EINTR is the end (or 10 s, or data), after which
   * first_child reads the children as often as it must. */
  while (poll(&ready, 1, 10000) < 0 && errno == EINTR) continue;
}

/* Whether the keeper's command closes its fds once it waits: the uid switch's --wait. */
static int closes_when_up(char **program) {
  int n = 0;
  while (program[n]) n++;
  return n > 0 && strcmp(program[n - 1], "--wait") == 0;
}

static int keep(const char *record, char **program) {
  char err[4096], tmp[4096];
  if (snprintf(err, sizeof err, "%s.err", record) >= (int)sizeof err ||
      snprintf(tmp, sizeof tmp, "%s.tmp", record) >= (int)sizeof tmp) {
    fprintf(stderr, "hal-launch: record path too long\n");
    return 125;
  }
  int info[2], ready[2] = {-1, -1};
  if (pipe2(info, O_CLOEXEC) != 0) die("pipe", "");
  if (closes_when_up(program) && pipe2(ready, O_CLOEXEC) != 0) die("pipe", "");
  pid_t child = fork();
  if (child < 0) die("fork", "");
  if (child == 0) {
    /* The keeper outlives us: its own session, its errors to a file (a pipe of our
     * caller's would stay open for its whole life), its info on fd 3, the pipe that says
     * it is up on READY_FD, close-on-exec cleared (dup2 clears it; a pipe end that is
     * READY_FD already keeps it). */
    int fd = open(err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || dup2(fd, 2) != 2 || setsid() < 0 || dup2(info[1], 3) != 3) _exit(125);
    if (ready[1] >= 0 && (ready[1] == READY_FD ? fcntl(READY_FD, F_SETFD, 0) != 0
                                               : dup2(ready[1], READY_FD) != READY_FD))
      _exit(125);
    execvp(program[0], program);
    _exit(127);
  }
  close(info[1]);
  long pid = info_pid(info[0]);
  close(info[0]);
  if (ready[0] >= 0) {
    close(ready[1]);
    if (pid > 0) wait_closed(ready[0]);
    close(ready[0]);
  }
  long sleeper = pid > 0 ? first_child(pid) : 0;
  char ns[64];
  snprintf(ns, sizeof ns, "/proc/%ld/ns/mnt", sleeper);
  struct stat st;
  if (sleeper <= 0 || stat(ns, &st) != 0) {
    fprintf(stderr, "hal-launch: the keeper did not start (see %s)\n", err);
    return 125;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) die("open", tmp);
  dprintf(fd, "%ld %llu\n", sleeper, (unsigned long long)st.st_ino);
  if (close(fd) != 0 || rename(tmp, record) != 0) die("write", record);
  return 0;
}

/* SECCOMP_FILE (if not empty) as fd 9, for bwrap's --seccomp. */
static void seccomp_fd(const char *file) {
  if (!file[0]) return;
  int fd = open(file, O_RDONLY);
  if (fd < 0) die("open", file);
  if (fd != SECCOMP_FD) {
    if (dup2(fd, SECCOMP_FD) != SECCOMP_FD) die("dup2", file);
    close(fd);
  }
}

/* Whether PROGRAM (named by path) is the file this process runs. */
static int is_this_launcher(const char *program) {
  struct stat self, other;
  if (!strchr(program, '/')) return 0; /* a PATH search: never this launcher's argv */
  if (stat("/proc/self/exe", &self) != 0 || stat(program, &other) != 0) return 0;
  return self.st_dev == other.st_dev && self.st_ino == other.st_ino;
}

/* --dies-with PARENT -- PROGRAM [ARG...]: see the top. Returns only when PROGRAM is this
 * launcher, which then carries on with argv + 4 (see main). */
static void dies_with(int argc, char **argv) {
  pid_t parent = parent_pid(argv[2]);
  if (argc < 5 || strcmp(argv[3], "--") != 0 || !parent) {
    fprintf(stderr, "usage: hal-launch --dies-with PARENT -- PROGRAM [ARG...]\n");
    _exit(125);
  }
  dies_with_parent(parent);
  if (is_this_launcher(argv[4])) return;
  execvp(argv[4], argv + 4);
  int saved = errno;
  fprintf(stderr, "hal-launch: failed to execute %s: %s\n", argv[4], strerror(saved));
  _exit(saved == ENOENT ? 127 : 126);
}

int main(int argc, char **argv) {
  while (argc > 2 && strcmp(argv[1], "--dies-with") == 0) {
    dies_with(argc, argv); /* returned: PROGRAM is this launcher, argv[4] its argv[0] */
    argv += 4;
    argc -= 4;
  }
  pid_t parent = 0; /* --parent: none given, no check (a launch by hand) */
  int given = 0;
  if (argc > 3 && strcmp(argv[1], "--parent") == 0) {
    parent = parent_pid(argv[2]);
    if (!parent) {
      fprintf(stderr, "hal-launch: bad parent %s\n", argv[2]);
      return 125;
    }
    given = 2;
  }
  while (argc - given > 3 && strcmp(argv[1 + given], "--data") == 0) {
    if (ndata == (int)(sizeof DATA / sizeof DATA[0])) {
      fprintf(stderr, "hal-launch: more than %d --data\n", ndata);
      return 125;
    }
    DATA[ndata][0] = argv[2 + given];
    DATA[ndata++][1] = argv[3 + given];
    given += 3;
  }
  if (given) {
    argv[given] = argv[0];
    argv += given;
    argc -= given;
  }
  int taken = enter_options(argc, argv);
  int entering = taken > 0;
  /* The pipes (bwrap's --file) for bwrap only: an entered command gets no extra fds. */
  if (!entering) apply_data();
  if (argc > 4 && strcmp(argv[1], "--keep") == 0 && strcmp(argv[3], "--") == 0) {
    if (parent && getppid() != parent) return 137; /* no keeper for a hal already dead */
    return keep(argv[2], argv + 4);
  }
  if (entering) {
    argv[taken] = argv[0];
    argv += taken;
    argc -= taken;
  }
  if (argc < 6) {
    fprintf(stderr, "usage: hal-launch SANDBOX SECCOMP FSIZE [JOIN...] -- PROGRAM [ARG...]\n");
    return 125;
  }
  if (setenv("HAL_SANDBOX", argv[1], 1) != 0) die("setenv", "HAL_SANDBOX");

  if (!entering) seccomp_fd(argv[2]);

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
  if (parent) dies_with_parent(parent); /* in the cgroups: from here, a stop sees us */

  if (entering) {
    open_keeper(argv[2]);
    for (int a = 0; a < E.nattach; a++) open_attach(a);
    enter(argv + i + 1);
  }
  execvp(argv[i + 1], argv + i + 1);
  int saved = errno;
  fprintf(stderr, "hal-launch: failed to execute %s: %s\n", argv[i + 1], strerror(saved));
  return saved == ENOENT ? 127 : 126;
}
