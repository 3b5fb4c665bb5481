/* hal-exec: run one command for hal inside a qemu sandbox, and leave nothing behind.
 *
 * sshd starts this as root for every exec. It puts the command in a fresh cgroup under
 * -C, in its own session (unless -t: a terminal session keeps its controlling tty), in
 * directory -d, as uid -u / gid -g, with exactly the environment given by -e NAME=VALUE
 * (non-secret, from argv) and -E NAME (copied from our own environment: secrets travel
 * over ssh's SendEnv, never in argv). -A NAME is -E for a variable sshd sets itself (HOME,
 * PATH, USER...): its value comes as HAL_ENV_NAME, which sshd leaves alone. When the command exits, everything it left in its
 * cgroup is killed, so a daemon that kept our stdout open cannot stall the caller. When
 * the caller goes away (sshd closes our stdout or stderr, or we get SIGHUP/SIGTERM), the
 * whole cgroup is killed too. Exit status: the command's, 128+N for death by signal N,
 * 125 when hal-exec itself fails, 126/127 when the program cannot be run / is missing.
 *
 * Written in C because under TCG emulation an interpreter's start-up costs ~0.4 s per exec.
 *
 * hal-exec is also root's login shell in the guest: sshd runs every session's command as
 * "SHELL -c COMMAND", and a real shell there cost one more dynamically linked exec per
 * command (~45 ms of guest CPU under TCG). With -c, hal-exec splits COMMAND itself,
 * accepting only what the host writes (Python's shlex.join: words of [A-Za-z0-9_@%+=:,./-],
 * '...' and "'" pieces, one space apart) and refusing anything else (exit 125). When the
 * first word is hal-exec, the rest are its options, as above; other words (hal's own root
 * steps: setup, sync, quiesce) are run as they are.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static void die(const char *what, const char *arg) {
    fprintf(stderr, "hal-exec: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
    exit(125);
}

static int write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n < 0 ? -1 : 0;
}

static void kill_cgroup(const char *cg) {
    if (cg[0] == '\0') return;
    write_file(cg, "cgroup.kill", "1");
    /* rmdir succeeds once the last process is gone (a few ms); give up after ~2 s. */
    for (int i = 0; i < 400 && rmdir(cg) != 0 && errno == EBUSY; i++) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

#define SELF "/usr/local/bin/hal-exec"

static int safe_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("_@%+=:,./-", c) != NULL);
}

/* Split a shlex.join() command line into words (NULL-terminated, *count of them); NULL
 * for anything else. Each input byte yields at most one output byte, and every word
 * takes at least one input byte plus the space before it, so the sizes below are bounds. */
static char **split(const char *line, int *count) {
    size_t len = strlen(line);
    char *out = malloc(len + 1);
    char **words = calloc(len / 2 + 2, sizeof *words);
    if (out == NULL || words == NULL || len == 0) return NULL;
    size_t o = 0;
    int n = 0;
    const char *p = line;
    for (;;) {
        words[n++] = out + o;
        int pieces = 0;
        for (; *p != '\0' && *p != ' '; pieces++) {
            if (*p == '\'') {
                const char *end = strchr(p + 1, '\'');
                if (end == NULL) return NULL;
                memcpy(out + o, p + 1, (size_t)(end - p - 1));
                o += (size_t)(end - p - 1);
                p = end + 1;
            } else if (p[0] == '"' && p[1] == '\'' && p[2] == '"') {
                out[o++] = '\'';
                p += 3;
            } else if (safe_char(*p)) {
                out[o++] = *p++;
            } else {
                return NULL;
            }
        }
        if (pieces == 0) return NULL;
        out[o++] = '\0';
        if (*p == '\0') break;
        p++; /* the one space between words */
    }
    words[n] = NULL;
    *count = n;
    return words;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "-c") == 0) { /* as root's login shell, see above */
        int count = 0;
        char **words = split(argv[2], &count);
        if (words == NULL) {
            fprintf(stderr, "hal-exec: refusing a command line hal does not write\n");
            return 125;
        }
        if (strcmp(words[0], SELF) != 0) {
            execvp(words[0], words);
            fprintf(stderr, "hal-exec: %s: %s\n", words[0], strerror(errno));
            return errno == ENOENT ? 127 : 126;
        }
        argc = count;
        argv = words;
    }
    int tty = 0, opt;
    long uid = -1, gid = -1;
    const char *dir = NULL, *cgroup_parent = NULL;
    char **env = calloc((size_t)argc + 1, sizeof *env);
    size_t nenv = 0;
    if (env == NULL) die("out of memory", NULL);
    while ((opt = getopt(argc, argv, "+tu:g:d:C:e:E:A:")) != -1) {
        switch (opt) {
        case 't': tty = 1; break;
        case 'u': uid = atol(optarg); break;
        case 'g': gid = atol(optarg); break;
        case 'd': dir = optarg; break;
        case 'C': cgroup_parent = optarg; break;
        case 'e': env[nenv++] = optarg; break;
        case 'A':
        case 'E': {
            char alias[256];
            snprintf(alias, sizeof alias, "HAL_ENV_%s", optarg);
            const char *value = getenv(opt == 'A' ? alias : optarg);
            if (value == NULL) break;
            size_t len = strlen(optarg) + strlen(value) + 2;
            char *pair = malloc(len);
            if (pair == NULL) die("out of memory", NULL);
            snprintf(pair, len, "%s=%s", optarg, value);
            env[nenv++] = pair;
            break;
        }
        default:
            fprintf(stderr, "usage: hal-exec [-t] [-u UID] [-g GID] [-d DIR] [-C CGROUP] "
                            "[-e NAME=VALUE]... [-E NAME]... [-A NAME]... -- PROGRAM [ARG]...\n");
            return 125;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "hal-exec: no program given\n");
        return 125;
    }
    char cg[256] = "";
    if (cgroup_parent != NULL) {
        snprintf(cg, sizeof cg, "%s/x%ld", cgroup_parent, (long)getpid());
        if (mkdir(cg, 0755) != 0) die("cannot create cgroup", cg);
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() must return on a signal */
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (tty) {
        signal(SIGINT, SIG_IGN);
        signal(SIGQUIT, SIG_IGN);
        signal(SIGTSTP, SIG_IGN);
    }
    int report[2]; /* the child reports a failed exec's errno through this pipe */
    if (pipe2(report, O_CLOEXEC) != 0) die("cannot create pipe", NULL);
    pid_t pid = fork();
    if (pid < 0) die("cannot fork", NULL);
    if (pid == 0) {
        int err = 0;
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        if (cg[0] && write_file(cg, "cgroup.procs", "0") != 0) err = errno;
        if (!err && !tty) setsid();
        if (!err && dir && chdir(dir) != 0) err = errno;
        if (!err && gid >= 0 && (setgroups(0, NULL) != 0 || setgid((gid_t)gid) != 0)) err = errno;
        if (!err && uid >= 0 && setuid((uid_t)uid) != 0) err = errno;
        if (err) {
            int code = -err; /* negative: our own failure, not exec's */
            (void)!write(report[1], &code, sizeof code);
            _exit(125);
        }
        environ = env; /* execvp searches the command's PATH, not ours */
        execvp(argv[optind], argv + optind);
        err = errno;
        (void)!write(report[1], &err, sizeof err);
        _exit(err == ENOENT ? 127 : 126);
    }
    close(report[1]);
    int failure = 0;
    if (read(report[0], &failure, sizeof failure) == (ssize_t)sizeof failure) {
        if (failure < 0) {
            errno = -failure;
            fprintf(stderr, "hal-exec: cannot enter %s: %s\n", dir ? dir : "the sandbox",
                    strerror(errno));
        } else {
            fprintf(stderr, "hal-exec: %s: %s\n", argv[optind], strerror(failure));
        }
    }
    close(report[0]);
    close(STDIN_FILENO);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int status = 0, done = 0;
    while (!done) {
        struct pollfd fds[3] = {
            {pidfd, POLLIN, 0}, {STDOUT_FILENO, 0, 0}, {STDERR_FILENO, 0, 0}};
        int n = poll(fds, pidfd >= 0 ? 3 : 0, pidfd >= 0 ? -1 : 100);
        if (stop_signal || (n > 0 && ((fds[1].revents | fds[2].revents) & (POLLERR | POLLHUP)))) {
            /* The caller is gone: end the whole command. */
            kill_cgroup(cg);
            if (!cg[0]) kill(tty ? pid : -pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 128 + SIGKILL;
        }
        if (waitpid(pid, &status, WNOHANG) == pid) done = 1;
    }
    close(STDOUT_FILENO);
    close(STDERR_FILENO);
    kill_cgroup(cg);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
