/* hal-agent: hal's exec channel inside a qemu sandbox, without ssh.
 *
 * usage: hal-agent PORT...   (the virtio-serial ports named hal.exec.N, e.g. /dev/vport0p2)
 *
 * Started by the guest's init before a VM state is saved, so a restored VM answers at
 * once: under TCG, about 85 % of a restore + first command over ssh was the guest running
 * sshd's handshake and forks for the first time. One process per port serves one host
 * connection at a time; each connection runs one command at a time through hal-exec's
 * own code (hal-exec.c, compiled in: under TCG an exec of even a static program costs
 * ~30 ms), so a command gets exactly what ssh gave it: its cgroup, directory, uid,
 * environment, exit status and kills.
 *
 * Frames, both ways: TYPE (1 byte), LENGTH (4 bytes, big-endian), LENGTH bytes.
 *   host -> guest  H hello: "halagnt1" + 16-byte nonce; ends whatever ran, answered by A
 *                  R request: argc, envc (4 bytes each, big-endian), then argc hal-exec
 *                    arguments and envc NAME=VALUE pairs, each NUL-terminated
 *                  I stdin bytes;  i end of stdin;  K kill the command;
 *                  P ping: 8 bytes, answered by p (empty: nothing, what older hosts send)
 *   guest -> host  A the hello's nonce;  O stdout bytes;  E stderr bytes (at most 64 KiB
 *                  each);  X exit status (4 bytes, big-endian), after all its output;
 *                  p pong: the ping's 8 bytes (the host takes a guest that answers
 *                  nothing for a while, not even a ping, for hung)
 * The host trusts none of what comes back (see providers/qemu/agent.py). When the host's
 * connection ends (the port hangs up), or a new hello comes, the command is killed (hal-exec
 * kills its cgroup on SIGTERM) and reaped before anything else is read.
 */
#define _GNU_SOURCE
#define main hal_exec_main
#include "hal-exec.c"
#undef main
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HAL_EXEC "/usr/local/bin/hal-exec" /* argv[0] of a command's hal-exec process */
#define READY "/run/hal-agent.ready"
#define MAX_DATA 65536
#define MAX_REQUEST (4 << 20)
#define STDIN_MAX (1 << 20)
#define MAGIC "halagnt1"
#define NONCE 16
#define HELLO_LEN (8 + NONCE)
#define PING 8
#define GRACE_MS 1000

static int port = -1;
static unsigned char *rbuf; /* what the host sent, not yet handled */
static size_t rlen;
static const size_t rcap = MAX_REQUEST + 5;

/* The running command (pid > 0), its pipes and what is queued for its stdin. */
static pid_t pid = -1;
static int pidfd = -1, in_fd = -1, out_fd = -1, err_fd = -1, status = 0, exited = 0;
static int stdin_eof = 0, running = 0;
static unsigned char *inbuf;
static size_t inlen;
static long long exit_at;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int write_all(int fd, const unsigned char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd w = {fd, POLLOUT, 0};
                poll(&w, 1, 100);
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_frame(int type, const void *data, size_t len) {
    static unsigned char frame[5 + MAX_DATA];
    frame[0] = (unsigned char)type;
    frame[1] = (unsigned char)(len >> 24);
    frame[2] = (unsigned char)(len >> 16);
    frame[3] = (unsigned char)(len >> 8);
    frame[4] = (unsigned char)len;
    memcpy(frame + 5, data, len);
    return write_all(port, frame, 5 + len);
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* End the command (hal-exec kills its cgroup on SIGTERM) and reap it; no exit frame. */
static void end_command(void) {
    if (running && !exited) {
        kill(pid, SIGTERM);
        long long give_up = now_ms() + 5000;
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (now_ms() > give_up) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    close_fd(&pidfd);
    close_fd(&in_fd);
    close_fd(&out_fd);
    close_fd(&err_fd);
    running = exited = stdin_eof = 0;
    inlen = 0;
    pid = -1;
}

/* Answer a command that cannot start as hal-exec would: a message and status 125. */
static void refuse(const char *why) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "hal-agent: %s\n", why);
    send_frame('E', msg, (size_t)n);
    unsigned char code[4] = {0, 0, 0, 125};
    send_frame('X', code, 4);
}

/* Start hal-exec with the request's arguments and environment. */
static void start_command(const unsigned char *p, size_t len) {
    uint32_t argc = len < 8 ? 0 : be32(p), envc = len < 8 ? 0 : be32(p + 4);
    if (len < 8 || argc > len || envc > len) {
        refuse("malformed request");
        return;
    }
    char **argv = calloc((size_t)argc + 2, sizeof *argv);
    char **envp = calloc((size_t)envc + 1, sizeof *envp);
    if (argv == NULL || envp == NULL) {
        refuse("out of memory");
        goto out;
    }
    const char *s = (const char *)p + 8, *end = (const char *)p + len;
    argv[0] = HAL_EXEC;
    for (uint32_t i = 0; i < argc + envc; i++) {
        const char *nul = memchr(s, '\0', (size_t)(end - s));
        if (nul == NULL) {
            refuse("malformed request");
            goto out;
        }
        if (i < argc) argv[i + 1] = (char *)s;
        else envp[i - argc] = (char *)s;
        s = nul + 1;
    }
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) != 0) {
        refuse("cannot create a pipe");
        goto out;
    }
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]); close(in[1]);
        refuse("cannot create a pipe");
        goto out;
    }
    if (pipe2(err, O_CLOEXEC) != 0) {
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        refuse("cannot create a pipe");
        goto out;
    }
    pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        /* No exec here: nothing of the agent (ports, the other ends of these pipes) may
         * stay open, or the command would never see the end of its stdin. */
        if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
            for (int fd = 3; fd < 4096; fd++) close(fd);
        environ = envp;
        exit(hal_exec_main((int)argc + 1, argv));
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in_fd = in[1];
    out_fd = out[0];
    err_fd = err[0];
    fcntl(in_fd, F_SETFL, O_NONBLOCK);
    if (pid < 0) {
        end_command();
        refuse("cannot fork");
        goto out;
    }
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    running = 1;
out:
    free(argv);
    free(envp);
}

/* Handle the complete frames in rbuf; 0, or -1 when the host broke the protocol. */
static int handle_frames(void) {
    size_t at = 0;
    int result = 0;
    while (rlen - at >= 5) {
        unsigned char type = rbuf[at];
        size_t len = be32(rbuf + at + 1);
        size_t limit = type == 'R' ? MAX_REQUEST : type == 'H' ? HELLO_LEN : MAX_DATA;
        if (len > limit || !strchr("HRIiKP", type) || type == 0) {
            result = -1;
            break;
        }
        if (rlen - at - 5 < len) break;
        const unsigned char *p = rbuf + at + 5;
        if (type == 'I' && running && !stdin_eof && in_fd >= 0) {
            if (inlen + len > STDIN_MAX) break; /* the command has not read enough yet */
            memcpy(inbuf + inlen, p, len);
            inlen += len;
        } else if (type == 'H') {
            if (len != HELLO_LEN || memcmp(p, MAGIC, 8) != 0) {
                result = -1;
                break;
            }
            end_command();
            if (send_frame('A', p + 8, NONCE) != 0) return -1;
        } else if (type == 'R' && !running) {
            start_command(p, len);
        } else if (type == 'i') {
            stdin_eof = 1;
        } else if (type == 'K' && running && !exited) {
            kill(pid, SIGTERM);
        } else if (type == 'P' && len == PING) {
            if (send_frame('p', p, PING) != 0) return -1;
        }
        at += 5 + len;
    }
    memmove(rbuf, rbuf + at, rlen - at);
    rlen -= at;
    if (result < 0) {
        /* Out of step (a host that died mid-frame): keep only from the next hello on. */
        unsigned char hello[5] = {'H', 0, 0, 0, HELLO_LEN};
        unsigned char *found = rlen > 1 ? memmem(rbuf + 1, rlen - 1, hello, 5) : NULL;
        size_t keep = found ? rlen - (size_t)(found - rbuf) : (rlen < 4 ? rlen : 4);
        memmove(rbuf, rbuf + rlen - keep, keep);
        rlen = keep;
        end_command();
        return found ? handle_frames() : 0;
    }
    return 0;
}

static int host_connected(void) {
    struct pollfd p = {port, 0, 0};
    return poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP);
}

/* Serve one host connection until it ends. */
static void session(void) {
    rlen = 0;
    for (;;) {
        if (running && stdin_eof && inlen == 0) close_fd(&in_fd);
        if (running && exited && ((out_fd < 0 && err_fd < 0) || now_ms() > exit_at)) {
            int code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            unsigned char frame[4] = {0, 0, 0, (unsigned char)code};
            close_fd(&out_fd);
            close_fd(&err_fd);
            end_command();
            if (send_frame('X', frame, 4) != 0) return;
        }
        struct pollfd fds[5] = {
            {port, inlen < STDIN_MAX && rlen < rcap ? POLLIN : 0, 0},
            {out_fd, POLLIN, 0},
            {err_fd, POLLIN, 0},
            {in_fd, inlen > 0 ? POLLOUT : 0, 0},
            {exited ? -1 : pidfd, POLLIN, 0},
        };
        int timeout = running && exited ? GRACE_MS : -1;
        if (poll(fds, 5, timeout) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(port, rbuf + rlen, rcap - rlen);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return; /* gone */
            if (n > 0) {
                rlen += (size_t)n;
                if (handle_frames() != 0) return;
            }
        } else if (fds[0].revents & (POLLHUP | POLLERR)) {
            return;
        }
        for (int i = 1; i <= 2; i++) {
            int *fd = i == 1 ? &out_fd : &err_fd;
            if (*fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            static unsigned char data[MAX_DATA];
            ssize_t n = read(*fd, data, sizeof data);
            if (n > 0) {
                if (send_frame(i == 1 ? 'O' : 'E', data, (size_t)n) != 0) return;
            } else if (n == 0 || errno != EINTR) {
                close_fd(fd);
            }
        }
        if (in_fd >= 0 && (fds[3].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = write(in_fd, inbuf, inlen);
            if (n > 0) {
                memmove(inbuf, inbuf + n, inlen - (size_t)n);
                inlen -= (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                close_fd(&in_fd); /* the command does not read its stdin: drop it */
                inlen = 0;
                stdin_eof = 1;
            }
        }
        if (running && !exited && (fds[4].revents & POLLIN)) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
                exit_at = now_ms() + GRACE_MS;
            }
        }
        if (running && (out_fd >= 0 || err_fd >= 0) && pidfd < 0) {
            /* no pidfd (old kernel): notice the exit by polling */
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = 1;
                exit_at = now_ms() + GRACE_MS;
            }
        }
    }
}

/* Serve one port forever: wait for the host to connect, serve it, clean up, again. */
static void serve(void) {
    sigset_t io;
    sigemptyset(&io);
    sigaddset(&io, SIGIO);
    sigprocmask(SIG_BLOCK, &io, NULL);
    /* The port raises SIGIO when the host connects or goes (it hangs up while none is). */
    fcntl(port, F_SETOWN, getpid());
    fcntl(port, F_SETFL, fcntl(port, F_GETFL) | O_ASYNC);
    rbuf = malloc(rcap);
    inbuf = malloc(STDIN_MAX);
    if (rbuf == NULL || inbuf == NULL) _exit(1);
    for (;;) {
        while (!host_connected()) {
            struct timespec wait = {1, 0};
            sigtimedwait(&io, NULL, &wait);
        }
        session();
        end_command();
        /* Drop what the host left unread, so the next connection starts clean. */
        while (!host_connected()) {
            ssize_t n = read(port, rbuf, rcap);
            if (n <= 0) break;
        }
        rlen = 0;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: hal-agent PORT...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int fds[argc];
    for (int i = 1; i < argc; i++) {
        fds[i] = open(argv[i], O_RDWR | O_CLOEXEC | O_NONBLOCK);
        if (fds[i] < 0) {
            fprintf(stderr, "hal-agent: cannot open %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
    }
    pid_t served[argc];
    for (int i = 1; i < argc; i++) {
        served[i] = fork();
        if (served[i] == 0) {
            port = fds[i];
            fcntl(port, F_SETFL, fcntl(port, F_GETFL) & ~O_NONBLOCK);
            serve();
        }
    }
    int ready = open(READY, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (ready >= 0) close(ready);
    for (;;) { /* a server that died is started again on its port */
        int st;
        pid_t gone = wait(&st);
        if (gone < 0) {
            if (errno == EINTR) continue;
            pause();
        }
        for (int i = 1; i < argc; i++) {
            if (served[i] != gone) continue;
            served[i] = fork();
            if (served[i] == 0) {
                port = fds[i];
                fcntl(port, F_SETFL, fcntl(port, F_GETFL) & ~O_NONBLOCK);
                serve();
            }
        }
    }
}
