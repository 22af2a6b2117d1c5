/*
 * berth-launch: starts one Berth container in a single exec from Node (DESIGN.md §10).
 *
 * Node must never call unshare/setns itself (it is multithreaded) and must never stay the container's
 * parent, so this helper does the whole start and detaches:
 *
 *   P0 launcher (spawned by Node) -- fork --> P1 (setsid) -- fork --> P2 supervisor, P1 exits at once
 *   P2 supervisor: subreaper, parent of init, writes init.pid / exit.status, exits when init exits
 *   P2 -- fork --> P3: joins the cgroups, unshare()s, forks init (P4) and exits, so P4 is
 *                      reparented to the subreaper P2
 *   P4 init: PID 1 of the new pid namespace; mounts, pivot_root, exec of the container's init
 *
 * P0 waits on a close-on-exec pipe for the outcome and prints exactly one JSON line on stdout:
 *   {"pid":<init host pid>,"startTime":<ticks>,"supervisorPid":<pid>,"warnings":[...]}
 * or {"error":"<step>","errno":<n>,"message":"..."} with exit code 1 (2 for bad arguments).
 *
 * Written for a tiny resident size: static (musl preferred), no stdio, no heap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h> /* renameat only: no stdio streams are used */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

#define MAX_CGROUPS 16
#define MAX_WARNINGS 4
/* How long init waits for the host's byte on the sync FIFO by default (--sync-timeout-ms; see run_init). */
#define SYNC_FIFO_WAIT_MS 30000

/* ---------- small output helpers (no stdio: keeps the supervisor's RSS tiny) ---------- */

struct buf {
    char b[2048];
    size_t n;
};

static void b_str(struct buf *o, const char *s) {
    while (*s && o->n < sizeof(o->b) - 1) o->b[o->n++] = *s++;
}

static void b_num(struct buf *o, long long v) {
    char t[24];
    int i = 0;
    unsigned long long u = v < 0 ? (unsigned long long)(-v) : (unsigned long long)v;
    if (v < 0) b_str(o, "-");
    do {
        t[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (i && o->n < sizeof(o->b) - 1) o->b[o->n++] = t[--i];
}

/* JSON string body: escapes quotes, backslashes and control characters. */
static void b_json(struct buf *o, const char *s) {
    static const char hex[] = "0123456789abcdef";
    b_str(o, "\"");
    for (; *s && o->n < sizeof(o->b) - 8; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            o->b[o->n++] = '\\';
            o->b[o->n++] = (char)c;
        } else if (c < 0x20) {
            b_str(o, "\\u00");
            o->b[o->n++] = hex[c >> 4];
            o->b[o->n++] = hex[c & 15];
        } else {
            o->b[o->n++] = (char)c;
        }
    }
    b_str(o, "\"");
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static void copy_str(char *dst, size_t cap, const char *src) {
    size_t i = 0;
    for (; src && src[i] && i < cap - 1; i++) dst[i] = src[i];
    dst[i] = 0;
}

/* ---------- messages between the processes (fixed size: one pipe write is atomic) ---------- */

enum { M_ERROR = 1, M_UNSHARED, M_INITPID, M_WARN, M_READY, M_OK };

struct msg {
    int type;
    int err;
    int pid;
    int spid;
    long long start;
    char step[24];
    char text[200];
};

/* ---------- configuration and shared state ---------- */

static struct {
    const char *rootfs, *hostname, *log, *state_dir, *fifo;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    int userns;
    unsigned long map_uid, map_count;
    const char *ov_lower, *ov_upper, *ov_work;
    int netns; /* 1: own network namespace (none/new), 0: host */
    unsigned long fifo_wait_ms;
    char **argv;
} cfg;

static char overlay_spec[4096];

static int log_fd = -1, null_fd = -1, state_fd = -1, fifo_fd = -1;
static int cg_fd[MAX_CGROUPS];

static void log_line(const char *step, int err, const char *text) {
    struct buf o = {.n = 0};
    if (log_fd < 0) return;
    b_str(&o, "berth-launch[");
    b_num(&o, getpid());
    b_str(&o, "]: ");
    b_str(&o, step);
    b_str(&o, ": ");
    if (err) {
        b_str(&o, strerror(err));
        if (text && *text) b_str(&o, ": ");
    }
    if (text) b_str(&o, text);
    b_str(&o, "\n");
    write_all(log_fd, o.b, o.n);
}

static void send_msg(int fd, int type, const char *step, int err, const char *text) {
    struct msg m;
    memset(&m, 0, sizeof(m));
    m.type = type;
    m.err = err;
    copy_str(m.step, sizeof(m.step), step);
    copy_str(m.text, sizeof(m.text), text);
    write_all(fd, &m, sizeof(m));
}

/* Reports a failed step to the process above, logs it, and exits: nothing is left half started. */
static void fail(int fd, const char *step, int err, const char *detail) {
    log_line(step, err, detail);
    send_msg(fd, M_ERROR, step, err, detail);
    _exit(1);
}

/* Closes every descriptor >= 3 except those listed (close_range over the gaps). */
static void close_except(const int *keep, int n) {
    int sorted[32], k = 0, i, j;
    for (i = 0; i < n && k < 32; i++)
        if (keep[i] >= 3) sorted[k++] = keep[i];
    for (i = 1; i < k; i++)
        for (j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            int t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    unsigned int from = 3;
    for (i = 0; i <= k; i++) {
        unsigned int to = i < k ? (unsigned int)sorted[i] : ~0U;
        if (to > from) {
            unsigned int last = i < k ? to - 1 : ~0U;
            if (syscall(SYS_close_range, from, last, 0) < 0) {
                unsigned int f, stop = last > 4096 ? 4096 : last;
                for (f = from; f <= stop; f++) close((int)f);
            }
        }
        if (i < k) from = to + 1;
    }
}

/*
 * Capabilities no container keeps, LXC's default drop list: loading kernel modules (sys_module), raw I/O
 * on ports and /dev/mem (sys_rawio), setting the host's clock (sys_time: an ntpd in a privileged container
 * would move it), and the LSMs' overrides (mac_admin, mac_override). Dropped from the bounding set, the
 * inheritable set and the ambient set (root's exec gains bounding | inheritable | ambient: a worker run
 * with inheritable capabilities must not hand them back) before the container's init, and every command
 * run in it, is exec'd. Under a user namespace they are powerless on the host already; dropping them
 * costs nothing there. A guard against accidents, not against a privileged container's root: it keeps
 * sys_admin, with which it can remount /proc/sys and reach the host (docs/design-notes.md).
 */
static const int dropped_caps[] = {16 /* sys_module */, 17 /* sys_rawio */, 25 /* sys_time */,
                                   32 /* mac_override */, 33 /* mac_admin */};

/* capget/capset's ABI (linux/capability.h, version 3: two 32-bit words per set); musl has no wrapper. */
struct cap_header {
    uint32_t version;
    int pid;
};
struct cap_data {
    uint32_t effective, permitted, inheritable;
};
#define CAP_VERSION_3 0x20080522
#define PR_CAP_AMBIENT_ 47
#define PR_CAP_AMBIENT_CLEAR_ALL_ 4

/* 0, or the errno of the first step that failed. */
static int drop_caps(void) {
    for (size_t i = 0; i < sizeof(dropped_caps) / sizeof(dropped_caps[0]); i++)
        if (prctl(PR_CAPBSET_DROP, dropped_caps[i], 0, 0, 0) < 0 && errno != EINVAL) return errno;
    /* EINVAL: a kernel without ambient capabilities (before 4.3), which then has none to clear */
    if (prctl(PR_CAP_AMBIENT_, PR_CAP_AMBIENT_CLEAR_ALL_, 0, 0, 0) < 0 && errno != EINVAL) return errno;
    struct cap_header h = {.version = CAP_VERSION_3, .pid = 0};
    struct cap_data d[2];
    memset(d, 0, sizeof(d));
    if (syscall(SYS_capget, &h, d) < 0) return errno;
    for (size_t i = 0; i < sizeof(dropped_caps) / sizeof(dropped_caps[0]); i++)
        d[dropped_caps[i] / 32].inheritable &= ~(1U << (dropped_caps[i] % 32));
    if (syscall(SYS_capset, &h, d) < 0) return errno;
    return 0;
}

/* Field 22 of /proc/<pid>/stat: start time in clock ticks since boot (identifies a pid incarnation). */
static long long read_start_time(int pid) {
    char path[48], data[1024];
    struct buf p = {.n = 0};
    b_str(&p, "/proc/");
    b_num(&p, pid);
    b_str(&p, "/stat");
    p.b[p.n] = 0;
    copy_str(path, sizeof(path), p.b);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, data, sizeof(data) - 1);
    close(fd);
    if (n <= 0) return -1;
    data[n] = 0;
    char *s = strrchr(data, ')');
    if (!s) return -1;
    s++;
    /* after ")" come fields 3, 4, ...: skip 19 of them to reach field 22 */
    for (int field = 3; field < 22; field++) {
        while (*s == ' ') s++;
        while (*s && *s != ' ') s++;
    }
    while (*s == ' ') s++;
    long long v = 0;
    if (*s < '0' || *s > '9') return -1;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}

/* Writes a small file in the state dir atomically (tmp + rename), so readers never see half of it. */
static int write_state(const char *name, const char *tmp, struct buf *o) {
    int fd = openat(state_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int r = write_all(fd, o->b, o->n);
    close(fd);
    if (r < 0) return -1;
    return renameat(state_fd, tmp, state_fd, name);
}

/* ---------- P4: becomes the container's PID 1 ---------- */

static void mount_or_fail(int fd, const char *step, const char *src, const char *dst, const char *type,
                          unsigned long flags, const char *data) {
    if (mount(src, dst, type, flags, data) < 0) fail(fd, step, errno, dst);
}

/* A mount point in the rootfs (proc, sys, dev), made when missing. The rootfs is the container's: a link
 * there would take the mount elsewhere (before the pivot, an absolute one resolves on the host), and
 * anything but a directory is refused. */
static void mount_point(int fd, const char *step, const char *name, mode_t mode) {
    struct stat st;
    if (lstat(name, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) fail(fd, step, ENOTDIR, name);
        return;
    }
    if (errno != ENOENT || mkdir(name, mode) < 0) fail(fd, step, errno, name);
}

/* The per-mount flags a bind remount of `path` must repeat (see run_init). */
static unsigned long mount_flags_of(const char *path) {
    struct statvfs sv;
    unsigned long f = 0;
    if (statvfs(path, &sv) < 0) return 0;
    if (sv.f_flag & ST_RDONLY) f |= MS_RDONLY;
    if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
    if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
    return f;
}

static void bring_up_loopback(int fd) {
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        send_msg(fd, M_WARN, "loopback", errno, "lo stays down");
        return;
    }
    memset(&ifr, 0, sizeof(ifr));
    copy_str(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) < 0))
        send_msg(fd, M_WARN, "loopback", errno, "lo stays down");
    close(s);
}

static void setup_dev(int fd) {
    static const char *nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    char host[32], inner[32];
    mount_or_fail(fd, "mount-dev", "tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k");
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
        struct buf h = {.n = 0}, c = {.n = 0};
        b_str(&h, "/dev/");
        b_str(&h, nodes[i]);
        h.b[h.n] = 0;
        b_str(&c, "dev/");
        b_str(&c, nodes[i]);
        c.b[c.n] = 0;
        copy_str(host, sizeof(host), h.b);
        copy_str(inner, sizeof(inner), c.b);
        /* Bind the host's node onto an empty file: works inside a user namespace, mknod would not. */
        int f = open(inner, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (f < 0) fail(fd, "mount-dev", errno, inner);
        close(f);
        mount_or_fail(fd, "mount-dev", host, inner, NULL, MS_BIND, NULL);
    }
    if (mkdir("dev/pts", 0755) < 0) fail(fd, "mount-devpts", errno, "dev/pts");
    mount_or_fail(fd, "mount-devpts", "devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620");
    if (symlink("pts/ptmx", "dev/ptmx") < 0) fail(fd, "mount-devpts", errno, "dev/ptmx");
    if (mkdir("dev/shm", 01777) < 0) fail(fd, "mount-shm", errno, "dev/shm");
    mount_or_fail(fd, "mount-shm", "tmpfs", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    /* conventional links; failures here are harmless */
    if (symlink("/proc/self/fd", "dev/fd") < 0 || symlink("/proc/self/fd/0", "dev/stdin") < 0 ||
        symlink("/proc/self/fd/1", "dev/stdout") < 0 || symlink("/proc/self/fd/2", "dev/stderr") < 0)
        send_msg(fd, M_WARN, "dev-links", errno, "some /dev links are missing");
}

static void run_init(int fd) {
    struct stat st;
    setsid();
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail(fd, "mount-private", errno, "/");
    if (cfg.ov_lower) mount_or_fail(fd, "mount-overlay", "overlay", cfg.rootfs, "overlay", 0, overlay_spec);
    mount_or_fail(fd, "bind-rootfs", cfg.rootfs, cfg.rootfs, NULL, MS_BIND | MS_REC, NULL);
    /* No device node in the root filesystem opens a device (its /dev is a tmpfs of its own, below): a
     * node that came with a template or that the container made must not reach a host disk. A bind
     * remount keeps the flags it cannot drop (locked under a user namespace), so they are passed again. */
    mount_or_fail(fd, "nodev-rootfs", NULL, cfg.rootfs, NULL,
                  MS_REMOUNT | MS_BIND | MS_NODEV | mount_flags_of(cfg.rootfs), NULL);
    if (chdir(cfg.rootfs) < 0) fail(fd, "chdir-rootfs", errno, cfg.rootfs);

    mount_point(fd, "mount-proc", "proc", 0555);
    mount_or_fail(fd, "mount-proc", "proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if (!cfg.userns) {
        /* A privileged container's root is the host's: the host's sysctls (most of /proc/sys is not
         * namespaced) and the magic SysRq key (reboot, crash) are read-only to it, as LXC's proc:mixed. */
        static const char *ro[] = {"proc/sys", "proc/sysrq-trigger"};
        for (size_t i = 0; i < sizeof(ro) / sizeof(ro[0]); i++) {
            if (stat(ro[i], &st) < 0 && errno == ENOENT) continue; /* a kernel without SysRq */
            mount_or_fail(fd, "proc-readonly", ro[i], ro[i], NULL, MS_BIND, NULL);
            mount_or_fail(fd, "proc-readonly", NULL, ro[i], NULL,
                          MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        }
    }

    mount_point(fd, "mount-sys", "sys", 0555);
    if (mount("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        /* Under a user namespace sysfs needs a network namespace of its own: go on without /sys. */
        if (cfg.userns && (errno == EPERM || errno == EACCES)) {
            log_line("mount-sys", errno, "/sys not mounted (user namespace without its own netns)");
            send_msg(fd, M_WARN, "mount-sys", errno, "/sys not mounted");
        } else {
            fail(fd, "mount-sys", errno, "sys");
        }
    }

    mount_point(fd, "mount-dev", "dev", 0755);
    setup_dev(fd);

    if (cfg.netns) bring_up_loopback(fd);
    if (cfg.hostname && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
        fail(fd, "sethostname", errno, cfg.hostname);

    /* The old root goes without a path of its own (as runc does): pivot_root(".", ".") stacks it on the new
     * root, and it is detached from there, through a descriptor. A mount point in the rootfs (which the
     * container's root controls) could be a link it planted, resolved on the host before the pivot and in
     * the container after it: the unmount then missed, and the host's root stayed mounted inside. */
    int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (oldroot < 0) fail(fd, "pivot_root", errno, "open /");
    if (syscall(SYS_pivot_root, ".", ".") < 0) fail(fd, "pivot_root", errno, cfg.rootfs);
    if (fchdir(oldroot) < 0) fail(fd, "umount-oldroot", errno, "fchdir");
    if (umount2(".", MNT_DETACH) < 0) fail(fd, "umount-oldroot", errno, "old root");
    close(oldroot);
    if (chdir("/") < 0) fail(fd, "pivot_root", errno, "chdir /");
    int cap_err = drop_caps();
    if (cap_err) fail(fd, "capabilities", cap_err, "dropping host capabilities from the bounding set");

    /* stdio of init: stdin from /dev/null, stdout and stderr to the log */
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) fail(fd, "stdio", errno, NULL);

    if (fifo_fd >= 0) {
        /* The host configures the network now; tell the caller we are up, then wait for its byte. */
        send_msg(fd, M_READY, "ready", 0, NULL);
        close(fd);
        fd = -1;
        /* Bounded: a host killed before its byte (a worker SIGKILLed while it set up the network) must not
         * leave an init that never execs. Past the wait this init exits; the host's open of the FIFO for
         * writing then fails (ENXIO, it opens without blocking) and its start fails instead of hanging. */
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(cfg.fifo_wait_ms / 1000);
        until.tv_nsec += (long)(cfg.fifo_wait_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        char c;
        ssize_t r = -1;
        for (;;) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long left_ms = (long)(until.tv_sec - now.tv_sec) * 1000 + (until.tv_nsec - now.tv_nsec) / 1000000;
            if (left_ms <= 0) {
                /* a byte that came at the last moment still counts */
                struct pollfd last = {.fd = fifo_fd, .events = POLLIN};
                if (poll(&last, 1, 0) == 1 && read(fifo_fd, &c, 1) == 1) r = 1;
                else errno = ETIMEDOUT;
                break;
            }
            struct pollfd p = {.fd = fifo_fd, .events = POLLIN};
            int n = poll(&p, 1, (int)left_ms);
            if (n < 0 && errno != EINTR) break;
            if (n <= 0) continue;
            r = read(fifo_fd, &c, 1);
            if (r == 1 || (r < 0 && errno != EINTR && errno != EAGAIN)) break;
        }
        if (r != 1) {
            log_line("sync-fifo", r < 0 ? errno : 0, "no byte from the host; not starting init");
            _exit(126);
        }
    }
    int keep[1] = {fd};
    close_except(keep, fd >= 0 ? 1 : 0);
    /* the pipe to the supervisor is close-on-exec: a successful exec is seen as EOF */
    execv(cfg.argv[0], cfg.argv);
    int e = errno;
    log_line("exec", e, cfg.argv[0]);
    if (fd >= 0) send_msg(fd, M_ERROR, "exec", e, cfg.argv[0]);
    _exit(127);
}

/*
 * Opens the file through which the calling process joins a cgroup, given its cgroup.procs: in a v1
 * hierarchy the sibling `tasks` file, else (v2) cgroup.procs itself. The caller writes "0" (itself). In
 * v1 a single thread moving itself through `tasks` does not take the cgroup threadgroup lock for writing,
 * which after a quiet moment waits for an RCU grace period: joining 7 hierarchies took 7.7 ms (p50, up to
 * 19) that way against 0.3 ms through `tasks` on the project's VMs. Our processes are single-threaded,
 * so moving the thread moves the process.
 */
static int open_cgroup_join(const char *procs) {
    static const char suffix[] = "/cgroup.procs";
    char tasks[4096];
    size_t n = strlen(procs), sl = sizeof(suffix) - 1;
    if (n > sl && n - sl + sizeof("/tasks") <= sizeof(tasks) && !strcmp(procs + n - sl, suffix)) {
        memcpy(tasks, procs, n - sl);
        memcpy(tasks + n - sl, "/tasks", sizeof("/tasks"));
        int fd = open(tasks, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) return fd;
    }
    return open(procs, O_WRONLY | O_CLOEXEC);
}

/* ---------- P3: cgroups, namespaces, fork of init ---------- */

static void run_setup(int to_sup, int from_sup) {
    /* join every cgroup before unsharing: the container never runs an instruction outside its cgroup
     * ("0": this process, see open_cgroup_join) */
    for (int i = 0; i < cfg.ncgroups; i++) {
        if (write_all(cg_fd[i], "0\n", 2) < 0) fail(to_sup, "cgroup", errno, cfg.cgroups[i]);
        close(cg_fd[i]);
    }
    int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
    if (cfg.netns) flags |= CLONE_NEWNET;
    if (cfg.userns) flags |= CLONE_NEWUSER;
    /* Drop the host's supplementary groups while still allowed to: inside the user namespace setgroups is
     * denied, and the container would keep them for ever. Root may always; as a non-root caller (tests),
     * there is nothing a group could grant that the caller did not have. */
    if (cfg.userns && setgroups(0, NULL) < 0 && errno != EPERM) fail(to_sup, "setgroups", errno, NULL);
    if (unshare(flags) < 0) fail(to_sup, "unshare", errno, NULL);
    if (cfg.userns) {
        int status = -1;
        send_msg(to_sup, M_UNSHARED, "unshared", 0, NULL);
        if (read(from_sup, &status, sizeof(status)) != sizeof(status) || status != 0) _exit(1);
        if (setresgid(0, 0, 0) < 0) fail(to_sup, "setresgid", errno, NULL);
        if (setresuid(0, 0, 0) < 0) fail(to_sup, "setresuid", errno, NULL);
    }
    close(from_sup);
    pid_t child = fork();
    if (child < 0) fail(to_sup, "fork-init", errno, NULL);
    if (child == 0) run_init(to_sup);
    struct msg m;
    memset(&m, 0, sizeof(m));
    m.type = M_INITPID;
    m.pid = child;
    write_all(to_sup, &m, sizeof(m));
    _exit(0); /* init is reparented to the supervisor (subreaper) */
}

/* ---------- P2: the supervisor ---------- */

static int write_id_maps(int pid) {
    static const char *files[] = {"setgroups", "uid_map", "gid_map"};
    struct buf map = {.n = 0};
    b_str(&map, "0 ");
    b_num(&map, (long long)cfg.map_uid);
    b_str(&map, " ");
    b_num(&map, (long long)cfg.map_count);
    b_str(&map, "\n");
    for (int i = 0; i < 3; i++) {
        struct buf path = {.n = 0};
        b_str(&path, "/proc/");
        b_num(&path, pid);
        b_str(&path, "/");
        b_str(&path, files[i]);
        path.b[path.n] = 0;
        int fd = open(path.b, O_WRONLY | O_CLOEXEC);
        if (fd < 0) return errno;
        int r = i == 0 ? write_all(fd, "deny", 4) : write_all(fd, map.b, map.n);
        int e = errno;
        close(fd);
        if (r < 0) return e ? e : EIO;
    }
    return 0;
}

static void run_supervisor(int report) {
    struct msg warns[MAX_WARNINGS], err;
    int nwarn = 0, have_err = 0, initpid = 0, toup[2], down[2];
    memset(&err, 0, sizeof(err));

    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    unlinkat(state_fd, "exit.status", 0);
    unlinkat(state_fd, "init.pid", 0);

    if (pipe2(toup, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0) fail(report, "pipe", errno, NULL);
    pid_t setup = fork();
    if (setup < 0) fail(report, "fork-setup", errno, NULL);
    if (setup == 0) {
        close(report);
        close(toup[0]);
        close(down[1]);
        run_setup(toup[1], down[0]);
    }
    close(toup[1]);
    close(down[0]);
    for (int i = 0; i < cfg.ncgroups; i++) close(cg_fd[i]);

    struct msg m;
    ssize_t r;
    while ((r = read(toup[0], &m, sizeof(m))) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (r != (ssize_t)sizeof(m)) break;
        if (m.type == M_UNSHARED) {
            int e = write_id_maps(setup);
            if (e && !have_err) {
                log_line("userns-map", e, NULL);
                err = m;
                err.type = M_ERROR;
                err.err = e;
                copy_str(err.step, sizeof(err.step), "userns-map");
                copy_str(err.text, sizeof(err.text), "writing uid_map/gid_map");
                have_err = 1;
            }
            write_all(down[1], &e, sizeof(e));
        } else if (m.type == M_INITPID) {
            initpid = m.pid;
        } else if (m.type == M_WARN) {
            if (nwarn < MAX_WARNINGS) warns[nwarn++] = m;
        } else if (m.type == M_ERROR && !have_err) {
            err = m;
            have_err = 1;
        }
    }
    close(toup[0]);
    close(down[1]);

    if (!have_err && initpid <= 0) {
        have_err = 1;
        err.type = M_ERROR;
        err.err = ECHILD;
        copy_str(err.step, sizeof(err.step), "setup");
        copy_str(err.text, sizeof(err.text), "setup process exited without starting init");
    }
    if (have_err) {
        if (initpid > 0) kill(initpid, SIGKILL);
        while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
        }
        write_all(report, &err, sizeof(err));
        _exit(1);
    }

    long long start = read_start_time(initpid);
    struct buf o = {.n = 0};
    b_str(&o, "{\"pid\":");
    b_num(&o, initpid);
    b_str(&o, ",\"startTime\":");
    b_num(&o, start);
    b_str(&o, ",\"supervisorPid\":");
    b_num(&o, getpid());
    b_str(&o, "}\n");
    if (write_state("init.pid", "init.pid.tmp", &o) < 0) log_line("state-dir", errno, "init.pid not written");

    for (int i = 0; i < nwarn; i++) write_all(report, &warns[i], sizeof(warns[i]));
    memset(&m, 0, sizeof(m));
    m.type = M_OK;
    m.pid = initpid;
    m.start = start;
    m.spid = getpid();
    write_all(report, &m, sizeof(m));
    close(report);
    if (fifo_fd >= 0) close(fifo_fd);

    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, 0);
        if (w < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left to supervise */
        }
        if (w != initpid) continue;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct buf s = {.n = 0};
        b_str(&s, "{\"pid\":");
        b_num(&s, initpid);
        b_str(&s, ",\"startTime\":");
        b_num(&s, start);
        if (WIFEXITED(st)) {
            b_str(&s, ",\"code\":");
            b_num(&s, WEXITSTATUS(st));
            b_str(&s, ",\"signal\":null");
        } else {
            b_str(&s, ",\"code\":null,\"signal\":");
            b_num(&s, WTERMSIG(st));
        }
        b_str(&s, ",\"exitedAtMs\":");
        b_num(&s, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
        b_str(&s, "}\n");
        if (write_state("exit.status", "exit.status.tmp", &s) < 0)
            log_line("state-dir", errno, "exit.status not written");
        break;
    }
    _exit(0);
}

/* ---------- P0: argument parsing and the one JSON line for the caller ---------- */

static void usage_error(const char *text) {
    struct buf o = {.n = 0};
    b_str(&o, "{\"error\":\"args\",\"errno\":22,\"message\":");
    b_json(&o, text);
    b_str(&o, "}\n");
    write_all(1, o.b, o.n);
    _exit(2);
}

static void early_error(const char *step, int err, const char *detail) {
    struct buf o = {.n = 0};
    b_str(&o, "{\"error\":");
    b_json(&o, step);
    b_str(&o, ",\"errno\":");
    b_num(&o, err);
    b_str(&o, ",\"message\":");
    struct buf t = {.n = 0};
    b_str(&t, step);
    b_str(&t, ": ");
    b_str(&t, strerror(err));
    if (detail) {
        b_str(&t, " (");
        b_str(&t, detail);
        b_str(&t, ")");
    }
    t.b[t.n] = 0;
    b_json(&o, t.b);
    b_str(&o, "}\n");
    write_all(1, o.b, o.n);
    log_line(step, err, detail);
    _exit(1);
}

static int parse_ulong(const char *s, unsigned long *out) {
    unsigned long v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 0xffffffffUL / 10) return -1;
        v = v * 10 + (unsigned long)(*s - '0');
    }
    *out = v;
    return 0;
}

static void parse_args(int argc, char **argv) {
    int i;
    cfg.netns = 1;
    cfg.fifo_wait_ms = SYNC_FIFO_WAIT_MS;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!v) usage_error("option without a value");
        if (!strcmp(a, "--rootfs")) cfg.rootfs = v;
        else if (!strcmp(a, "--hostname")) cfg.hostname = v;
        else if (!strcmp(a, "--log")) cfg.log = v;
        else if (!strcmp(a, "--state-dir")) cfg.state_dir = v;
        else if (!strcmp(a, "--sync-fifo")) cfg.fifo = v;
        else if (!strcmp(a, "--sync-timeout-ms")) {
            if (parse_ulong(v, &cfg.fifo_wait_ms) < 0 || cfg.fifo_wait_ms == 0 || cfg.fifo_wait_ms > 3600000UL)
                usage_error("--sync-timeout-ms wants 1..3600000");
        }
        else if (!strcmp(a, "--cgroup-procs")) {
            if (cfg.ncgroups == MAX_CGROUPS) usage_error("too many --cgroup-procs");
            cfg.cgroups[cfg.ncgroups++] = v;
        } else if (!strcmp(a, "--userns-map")) {
            char num[24];
            const char *c = strchr(v, ':');
            if (!c || (size_t)(c - v) >= sizeof(num)) usage_error("--userns-map wants HOSTUID:COUNT");
            memcpy(num, v, (size_t)(c - v));
            num[c - v] = 0;
            if (parse_ulong(num, &cfg.map_uid) < 0 || parse_ulong(c + 1, &cfg.map_count) < 0 ||
                cfg.map_count == 0 || cfg.map_uid == 0)
                usage_error("--userns-map wants HOSTUID:COUNT with HOSTUID > 0 and COUNT > 0");
            cfg.userns = 1;
        } else if (!strcmp(a, "--overlay")) {
            /* lowerdir:upperdir:workdir; a ',' would smuggle extra mount options in */
            if (strchr(v, ',')) usage_error("--overlay paths must not contain ','");
            const char *c1 = strchr(v, ':');
            const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (!c1 || !c2 || strchr(c2 + 1, ':') || c1 == v || c2 == c1 + 1 || !c2[1])
                usage_error("--overlay wants LOWER:UPPER:WORK");
            struct buf o = {.n = 0};
            b_str(&o, "lowerdir=");
            for (const char *p = v; p < c1 && o.n < sizeof(o.b) - 1; p++) o.b[o.n++] = *p;
            b_str(&o, ",upperdir=");
            for (const char *p = c1 + 1; p < c2 && o.n < sizeof(o.b) - 1; p++) o.b[o.n++] = *p;
            b_str(&o, ",workdir=");
            b_str(&o, c2 + 1);
            o.b[o.n] = 0;
            copy_str(overlay_spec, sizeof(overlay_spec), o.b);
            cfg.ov_lower = v;
        } else if (!strcmp(a, "--net")) {
            if (!strcmp(v, "none") || !strcmp(v, "new")) cfg.netns = 1;
            else if (!strcmp(v, "host")) cfg.netns = 0;
            else usage_error("--net wants none, new or host");
        } else {
            usage_error("unknown option");
        }
        i++;
    }
    if (i >= argc) usage_error("missing -- /sbin/init [args...]");
    cfg.argv = argv + i;
    if (!cfg.rootfs || cfg.rootfs[0] != '/') usage_error("--rootfs must be an absolute path");
    if (!cfg.state_dir || cfg.state_dir[0] != '/') usage_error("--state-dir must be an absolute path");
    if (cfg.argv[0][0] != '/') usage_error("the init path must be absolute");
    if (cfg.hostname && (strlen(cfg.hostname) == 0 || strlen(cfg.hostname) > 64))
        usage_error("--hostname must be 1 to 64 characters");
}

/* ---------- exec mode: run a command inside a running container, counted in its cgroup ----------
 *
 *   berth-launch exec --target PID [--userns] [--cgroup-procs FILE]... -- PROGRAM [ARGS...]
 *
 * E0 (this process, stays outside the container): opens the target's namespaces, root and working
 * directory, setns()es into its pid namespace (affects children only) and forks E1, then waits for it and
 * exits with its status (128 + signal number when it was killed, as shells report it).
 * E1: joins the container's cgroups *first* (so the command and all it forks count against the
 * container's memory and pids limits, never the caller's), enters the mount, UTS, IPC and network
 * namespaces (the user namespace last, as nsenter does: entering it first would drop host privileges),
 * chroots into the container's root, takes init's working directory, becomes container root and execs.
 * stdin/stdout/stderr are the caller's. A failure of the helper itself prints
 * "berth-exec: <step>: <error>" on stderr and exits 125 (126/127 when the program cannot be run).
 */

static void exec_fail(const char *step, int err, const char *detail) {
    struct buf o = {.n = 0};
    b_str(&o, "berth-exec: ");
    b_str(&o, step);
    b_str(&o, ": ");
    b_str(&o, strerror(err));
    if (detail) {
        b_str(&o, " (");
        b_str(&o, detail);
        b_str(&o, ")");
    }
    b_str(&o, "\n");
    write_all(2, o.b, o.n);
    _exit(125);
}

static int open_proc(int pid, const char *what, int flags) {
    struct buf p = {.n = 0};
    b_str(&p, "/proc/");
    b_num(&p, pid);
    b_str(&p, "/");
    b_str(&p, what);
    p.b[p.n] = 0;
    int fd = open(p.b, flags | O_CLOEXEC);
    if (fd < 0) exec_fail("open", errno, p.b);
    return fd;
}

static pid_t exec_child = 0;

static void forward_signal(int sig) {
    if (exec_child > 0) kill(exec_child, sig);
}

static int exec_main(int argc, char **argv) {
    static const char *ns_names[] = {"mnt", "uts", "ipc", "net"};
    static const int ns_types[] = {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET};
    const char *cgroups[MAX_CGROUPS];
    int ncg = 0, userns = 0, i;
    unsigned long target = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "--userns")) {
            userns = 1;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) exec_fail("args", EINVAL, "option without a value");
        if (!strcmp(a, "--target")) {
            if (parse_ulong(v, &target) < 0 || target <= 1 || target > 0x3fffffffUL)
                exec_fail("args", EINVAL, "--target wants a pid > 1");
        } else if (!strcmp(a, "--cgroup-procs")) {
            if (ncg == MAX_CGROUPS) exec_fail("args", E2BIG, "too many --cgroup-procs");
            if (v[0] != '/') exec_fail("args", EINVAL, "--cgroup-procs must be absolute");
            cgroups[ncg++] = v;
        } else {
            exec_fail("args", EINVAL, a);
        }
        i++;
    }
    if (!target) exec_fail("args", EINVAL, "--target is required");
    if (i >= argc) exec_fail("args", EINVAL, "missing -- PROGRAM [ARGS...]");
    char **cmd = argv + i;
    int pid = (int)target;

    /* everything is opened before any setns: the paths are the host's */
    int cg[MAX_CGROUPS], ns[4], user_fd = -1;
    for (int k = 0; k < ncg; k++) {
        cg[k] = open_cgroup_join(cgroups[k]);
        if (cg[k] < 0) exec_fail("cgroup", errno, cgroups[k]);
    }
    for (int k = 0; k < 4; k++) {
        char what[16] = "ns/";
        copy_str(what + 3, sizeof(what) - 3, ns_names[k]);
        ns[k] = open_proc(pid, what, O_RDONLY);
    }
    if (userns) user_fd = open_proc(pid, "ns/user", O_RDONLY);
    int pid_fd = open_proc(pid, "ns/pid", O_RDONLY);
    int root_fd = open_proc(pid, "root", O_RDONLY | O_DIRECTORY);
    int cwd_fd = open_proc(pid, "cwd", O_RDONLY | O_DIRECTORY);
    if (setns(pid_fd, CLONE_NEWPID) < 0) exec_fail("setns", errno, "pid");
    close(pid_fd);

    signal(SIGTERM, forward_signal);
    signal(SIGINT, forward_signal);
    signal(SIGHUP, forward_signal);
    signal(SIGQUIT, forward_signal);
    exec_child = fork();
    if (exec_child < 0) exec_fail("fork", errno, NULL);
    if (exec_child == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGQUIT, SIG_DFL);
        /* "0" is the writer itself, whatever its pid is called in the container's pid namespace */
        for (int k = 0; k < ncg; k++) {
            if (write_all(cg[k], "0\n", 2) < 0) exec_fail("cgroup", errno, cgroups[k]);
            close(cg[k]);
        }
        /* drop the host's supplementary groups while still allowed to (setgroups is denied in the userns) */
        if (userns && setgroups(0, NULL) < 0) exec_fail("setgroups", errno, NULL);
        for (int k = 0; k < 4; k++) {
            if (setns(ns[k], ns_types[k]) < 0) exec_fail("setns", errno, ns_names[k]);
            close(ns[k]);
        }
        if (userns && setns(user_fd, CLONE_NEWUSER) < 0) exec_fail("setns", errno, "user");
        if (fchdir(root_fd) < 0 || chroot(".") < 0) exec_fail("chroot", errno, NULL);
        if (fchdir(cwd_fd) < 0 && chdir("/") < 0) exec_fail("chdir", errno, NULL);
        close(root_fd);
        close(cwd_fd);
        if (userns) {
            if (setresgid(0, 0, 0) < 0) exec_fail("setresgid", errno, NULL);
            if (setresuid(0, 0, 0) < 0) exec_fail("setresuid", errno, NULL);
        }
        int cap_err = drop_caps();
        if (cap_err) exec_fail("capabilities", cap_err, NULL);
        execvp(cmd[0], cmd);
        int e = errno;
        struct buf o = {.n = 0};
        b_str(&o, "berth-exec: exec: ");
        b_str(&o, strerror(e));
        b_str(&o, " (");
        b_str(&o, cmd[0]);
        b_str(&o, ")\n");
        write_all(2, o.b, o.n);
        _exit(e == ENOENT ? 127 : 126);
    }
    for (int k = 0; k < ncg; k++) close(cg[k]);
    for (;;) {
        int st;
        pid_t w = waitpid(exec_child, &st, 0);
        if (w < 0) {
            if (errno == EINTR) continue;
            exec_fail("wait", errno, NULL);
        }
        if (WIFEXITED(st)) return WEXITSTATUS(st);
        if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    }
}

/* ---------- btrfs mode: snapshots and deletes by ioctl, for the btrfs storage driver ----------
 *
 *   berth-launch btrfs-snapshot SRC DST [--readonly]
 *   berth-launch btrfs-delete PATH...
 *
 * The same ioctls `btrfs subvolume snapshot` / `btrfs subvolume delete` use, without loading the dynamic
 * btrfs-progs binary (≈ 12 ms per call from Node here, most of it the program, not the kernel). Paths must
 * be absolute; DST must not exist (EEXIST). btrfs-delete tries every path and fails if any failed (as the
 * btrfs command does). Success: exit 0, nothing printed. A failure prints
 * "berth-btrfs: <step>: <error> (<path>)" on stderr and exits 1 (2 for bad arguments).
 *
 * musl's headers do not carry linux/btrfs.h: the structs and ioctl numbers below are the kernel's stable
 * ABI (include/uapi/linux/btrfs.h).
 */

#define B_IOCTL_MAGIC 0x94
#define B_PATH_NAME_MAX 4087
#define B_SUBVOL_NAME_MAX 4039
#define B_SUBVOL_RDONLY (1ULL << 1)
#define B_SUPER_MAGIC 0x9123683EUL
#define B_FIRST_FREE_OBJECTID 256 /* the inode number of every subvolume's root directory */

struct b_vol_args {
    int64_t fd;
    char name[B_PATH_NAME_MAX + 1];
};

struct b_vol_args_v2 {
    int64_t fd;
    uint64_t transid;
    uint64_t flags;
    uint64_t unused[4];
    char name[B_SUBVOL_NAME_MAX + 1];
};

_Static_assert(sizeof(struct b_vol_args) == 4096, "btrfs_ioctl_vol_args is 4096 bytes");
_Static_assert(sizeof(struct b_vol_args_v2) == 4096, "btrfs_ioctl_vol_args_v2 is 4096 bytes");

#define B_IOC_SNAP_DESTROY _IOW(B_IOCTL_MAGIC, 15, struct b_vol_args)
#define B_IOC_SNAP_CREATE_V2 _IOW(B_IOCTL_MAGIC, 23, struct b_vol_args_v2)

static int btrfs_report(const char *step, int err, const char *path) {
    struct buf o = {.n = 0};
    b_str(&o, "berth-btrfs: ");
    b_str(&o, step);
    b_str(&o, ": ");
    b_str(&o, strerror(err));
    if (path) {
        b_str(&o, " (");
        b_str(&o, path);
        b_str(&o, ")");
    }
    b_str(&o, "\n");
    write_all(2, o.b, o.n);
    return 1;
}

static void btrfs_usage(const char *text) {
    struct buf o = {.n = 0};
    b_str(&o, "berth-btrfs: args: ");
    b_str(&o, text);
    b_str(&o, "\n");
    write_all(2, o.b, o.n);
    _exit(2);
}

/*
 * Splits an absolute path into its parent directory (opened) and its last component (copied to name).
 * Returns the parent's fd, or -1 with errno set. Refuses "/", "." and ".." as last component.
 */
static int open_parent(const char *path, char *name, size_t cap) {
    char parent[4096];
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--; /* "a/b/" names b */
    if (len >= sizeof(parent) || path[0] != '/') {
        errno = len >= sizeof(parent) ? ENAMETOOLONG : EINVAL;
        return -1;
    }
    memcpy(parent, path, len);
    parent[len] = 0;
    char *slash = strrchr(parent, '/');
    const char *base = slash + 1;
    size_t blen = strlen(base);
    if (blen == 0 || !strcmp(base, ".") || !strcmp(base, "..")) {
        errno = EINVAL;
        return -1;
    }
    if (blen >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(name, base, blen + 1);
    if (slash == parent) slash[1] = 0; /* the parent is "/" */
    else *slash = 0;
    return open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static int btrfs_snapshot_main(int argc, char **argv) {
    const char *src = NULL, *dst = NULL;
    int readonly = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--readonly")) readonly = 1;
        else if (!src) src = argv[i];
        else if (!dst) dst = argv[i];
        else btrfs_usage("btrfs-snapshot SRC DST [--readonly]");
    }
    if (!src || !dst || src[0] != '/' || dst[0] != '/')
        btrfs_usage("btrfs-snapshot wants absolute SRC and DST");
    struct b_vol_args_v2 args;
    memset(&args, 0, sizeof(args));
    int src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src_fd < 0) return btrfs_report("open", errno, src);
    /* The kernel snapshots the subvolume *containing* a plain directory (the whole pool for a directory
     * at its top): only a subvolume's root (inode 256 on btrfs) is a valid source, as btrfs-progs checks. */
    struct stat st;
    struct statfs sfs;
    if (fstat(src_fd, &st) < 0 || fstatfs(src_fd, &sfs) < 0) return btrfs_report("stat", errno, src);
    if ((unsigned long)sfs.f_type != B_SUPER_MAGIC || st.st_ino != B_FIRST_FREE_OBJECTID)
        return btrfs_report("not a btrfs subvolume", EINVAL, src);
    int dir_fd = open_parent(dst, args.name, sizeof(args.name));
    if (dir_fd < 0) return btrfs_report("open", errno, dst);
    args.fd = src_fd;
    if (readonly) args.flags = B_SUBVOL_RDONLY;
    if (ioctl(dir_fd, B_IOC_SNAP_CREATE_V2, &args) < 0) return btrfs_report("snapshot", errno, dst);
    return 0;
}

static int btrfs_delete_main(int argc, char **argv) {
    int failed = 0;
    if (argc < 2) btrfs_usage("btrfs-delete wants PATH...");
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '/') btrfs_usage("btrfs-delete wants absolute paths");
    for (int i = 1; i < argc; i++) {
        struct b_vol_args args;
        memset(&args, 0, sizeof(args));
        int dir_fd = open_parent(argv[i], args.name, sizeof(args.name));
        if (dir_fd < 0) {
            failed = btrfs_report("open", errno, argv[i]);
            continue;
        }
        if (ioctl(dir_fd, B_IOC_SNAP_DESTROY, &args) < 0) failed = btrfs_report("delete", errno, argv[i]);
        close(dir_fd);
    }
    return failed;
}

/* ---------- btrfs-serve: the btrfs subcommands for one long-lived client, over a pipe ----------
 *   berth-launch btrfs-serve
 * Prints "berth-btrfs-serve 1\n", then reads requests on stdin, one per line:
 *   <id> TAB <btrfs-snapshot|btrfs-delete> TAB <arg> [TAB <arg>...] LF
 * (the arguments as on the command line; none may hold a tab or a newline) and answers each on stdout:
 *   <id> TAB <exit code> TAB <what the subcommand printed, tabs and newlines as spaces> LF
 * Each request runs in a child forked from this small static process (a fork here costs a fraction of a
 * spawn from the Node process that sends the requests), in a grandchild whose output the child collects,
 * so that every request gets its answer, whatever way the subcommand ends. Requests run side by side and
 * are answered as they finish (one write per answer, under PIPE_BUF: answers never interleave). Exits at
 * end of input. */
static void serve_answer(const char *id, int code, const char *msg) {
    struct buf o = {.n = 0};
    b_str(&o, id);
    b_str(&o, "\t");
    b_num(&o, code);
    b_str(&o, "\t");
    size_t start = o.n;
    b_str(&o, msg);
    for (size_t i = start; i < o.n; i++)
        if (o.b[i] == '\t' || o.b[i] == '\n') o.b[i] = ' ';
    /* b_str stops at the buffer (2 KiB): one atomic pipe write */
    o.b[o.n++] = '\n';
    write_all(1, o.b, o.n);
}

static void serve_one(char *line) {
    char *argv[64];
    int argc = 0;
    char *tab = strchr(line, '\t');
    if (!tab || tab == line) return; /* no id: nobody to answer */
    *tab = 0;
    const char *id = line;
    for (char *p = tab + 1; p && argc < 63; argc++) {
        argv[argc] = p;
        p = strchr(p, '\t');
        if (p) *p++ = 0;
    }
    argv[argc] = NULL;
    pid_t child = fork();
    if (child < 0) {
        serve_answer(id, 1, "berth-btrfs: fork failed");
        return;
    }
    if (child > 0) return;
    /* the child: runs the request in a grandchild, collects its output and exit, answers */
    signal(SIGCHLD, SIG_DFL);
    int out[2];
    if (pipe(out) < 0) {
        serve_answer(id, 1, "berth-btrfs: pipe failed");
        _exit(0);
    }
    pid_t run = fork();
    if (run == 0) {
        close(out[0]);
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[1]);
        if (!strcmp(argv[0], "btrfs-snapshot")) _exit(btrfs_snapshot_main(argc, argv));
        if (!strcmp(argv[0], "btrfs-delete")) _exit(btrfs_delete_main(argc, argv));
        btrfs_usage("btrfs-serve takes btrfs-snapshot and btrfs-delete requests");
    }
    close(out[1]);
    char msg[2048];
    size_t n = 0;
    for (;;) {
        char chunk[512];
        ssize_t r = read(out[0], chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t i = 0; i < r && n < sizeof(msg) - 1; i++) msg[n++] = chunk[i];
    }
    msg[n] = 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = 0;
    int status = 0;
    if (run < 0) {
        serve_answer(id, 1, "berth-btrfs: fork failed");
        _exit(0);
    }
    while (waitpid(run, &status, 0) < 0 && errno == EINTR) {
    }
    serve_answer(id, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), msg);
    _exit(0);
}

static int btrfs_serve_main(void) {
    static char in[65536];
    size_t have = 0;
    signal(SIGCHLD, SIG_IGN); /* the children are reaped by the kernel */
    signal(SIGPIPE, SIG_DFL);
    const char hello[] = "berth-btrfs-serve 1\n";
    if (write_all(1, hello, sizeof(hello) - 1) < 0) return 1;
    for (;;) {
        ssize_t r = read(0, in + have, sizeof(in) - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r < 0 ? 1 : 0;
        have += (size_t)r;
        char *start = in, *nl;
        while ((nl = memchr(start, '\n', (size_t)(in + have - start)))) {
            *nl = 0;
            serve_one(start);
            start = nl + 1;
        }
        size_t rest = (size_t)(in + have - start);
        if (rest == sizeof(in)) return 2; /* a request longer than the buffer */
        memmove(in, start, rest);
        have = rest;
    }
}

int main(int argc, char **argv) {
    int report[2];
    struct stat st;

    if (argc > 1 && !strcmp(argv[1], "exec")) return exec_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "btrfs-snapshot")) return btrfs_snapshot_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "btrfs-delete")) return btrfs_delete_main(argc - 1, argv + 1);
    if (argc == 2 && !strcmp(argv[1], "btrfs-serve")) return btrfs_serve_main();

    parse_args(argc, argv);
    /* An overlay mounted inside a user namespace cannot write trusted.overlay.* xattrs (opaque
     * directories, redirects): userxattr makes it use user.overlay.* instead (kernel >= 5.11). */
    if (cfg.ov_lower && cfg.userns) {
        struct buf o = {.n = 0};
        b_str(&o, overlay_spec);
        b_str(&o, ",userxattr");
        if (o.n >= sizeof(o.b) - 1) usage_error("--overlay paths are too long");
        o.b[o.n] = 0;
        copy_str(overlay_spec, sizeof(overlay_spec), o.b);
    }

    null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0) early_error("open", errno, "/dev/null");
    if (cfg.log) {
        log_fd = open(cfg.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (log_fd < 0) early_error("log", errno, cfg.log);
    } else {
        log_fd = null_fd;
    }
    /* everything that can be checked before forking is checked here: a failure leaves no process */
    if (stat(cfg.rootfs, &st) < 0) early_error("rootfs", errno, cfg.rootfs);
    if (!S_ISDIR(st.st_mode)) early_error("rootfs", ENOTDIR, cfg.rootfs);
    state_fd = open(cfg.state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (state_fd < 0) early_error("state-dir", errno, cfg.state_dir);
    for (int i = 0; i < cfg.ncgroups; i++) {
        cg_fd[i] = open_cgroup_join(cfg.cgroups[i]);
        if (cg_fd[i] < 0) early_error("cgroup", errno, cfg.cgroups[i]);
    }
    if (cfg.fifo) {
        /* O_RDWR: opening never blocks, and read() waits for the host's byte instead of seeing EOF */
        fifo_fd = open(cfg.fifo, O_RDWR | O_CLOEXEC);
        if (fifo_fd < 0) early_error("sync-fifo", errno, cfg.fifo);
        if (fstat(fifo_fd, &st) < 0 || !S_ISFIFO(st.st_mode)) early_error("sync-fifo", EINVAL, cfg.fifo);
    }
    if (pipe2(report, O_CLOEXEC) < 0) early_error("pipe", errno, NULL);

    pid_t p1 = fork();
    if (p1 < 0) early_error("fork", errno, NULL);
    if (p1 == 0) {
        /* P1: drop everything of the caller, new session, fork the supervisor, exit */
        int keep[4 + MAX_CGROUPS], n = 0;
        keep[n++] = report[1];
        keep[n++] = null_fd;
        keep[n++] = state_fd;
        if (log_fd != null_fd) keep[n++] = log_fd;
        if (fifo_fd >= 0) keep[n++] = fifo_fd;
        for (int i = 0; i < cfg.ncgroups; i++) keep[n++] = cg_fd[i];
        close(report[0]);
        if (dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(null_fd, 2) < 0)
            fail(report[1], "stdio", errno, NULL);
        close_except(keep, n);
        if (chdir("/") < 0) fail(report[1], "chdir", errno, "/");
        if (setsid() < 0) fail(report[1], "setsid", errno, NULL);
        pid_t p2 = fork();
        if (p2 < 0) fail(report[1], "fork", errno, NULL);
        if (p2 == 0) run_supervisor(report[1]);
        _exit(0);
    }
    close(report[1]);

    struct msg m, warns[MAX_WARNINGS], result;
    int nwarn = 0, have = 0;
    ssize_t r;
    memset(&result, 0, sizeof(result));
    while ((r = read(report[0], &m, sizeof(m))) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (r != (ssize_t)sizeof(m)) break;
        if (m.type == M_WARN && nwarn < MAX_WARNINGS) warns[nwarn++] = m;
        else if ((m.type == M_OK || m.type == M_ERROR) && !have) {
            result = m;
            have = 1;
        }
    }
    while (waitpid(p1, NULL, 0) < 0 && errno == EINTR) {
    }

    struct buf o = {.n = 0};
    if (!have) {
        result.type = M_ERROR;
        result.err = EPIPE;
        copy_str(result.step, sizeof(result.step), "supervisor");
        copy_str(result.text, sizeof(result.text), "the supervisor exited without reporting");
    }
    if (result.type == M_OK) {
        b_str(&o, "{\"pid\":");
        b_num(&o, result.pid);
        b_str(&o, ",\"startTime\":");
        b_num(&o, result.start);
        b_str(&o, ",\"supervisorPid\":");
        b_num(&o, result.spid);
        b_str(&o, ",\"warnings\":[");
        for (int i = 0; i < nwarn; i++) {
            struct buf w = {.n = 0};
            b_str(&w, warns[i].step);
            b_str(&w, ": ");
            if (warns[i].err) b_str(&w, strerror(warns[i].err));
            if (warns[i].text[0]) {
                b_str(&w, " (");
                b_str(&w, warns[i].text);
                b_str(&w, ")");
            }
            w.b[w.n] = 0;
            if (i) b_str(&o, ",");
            b_json(&o, w.b);
        }
        b_str(&o, "]}\n");
        write_all(1, o.b, o.n);
        return 0;
    }
    struct buf t = {.n = 0};
    b_str(&t, result.step);
    b_str(&t, ": ");
    b_str(&t, result.err ? strerror(result.err) : "failed");
    if (result.text[0]) {
        b_str(&t, " (");
        b_str(&t, result.text);
        b_str(&t, ")");
    }
    t.b[t.n] = 0;
    b_str(&o, "{\"error\":");
    b_json(&o, result.step);
    b_str(&o, ",\"errno\":");
    b_num(&o, result.err);
    b_str(&o, ",\"message\":");
    b_json(&o, t.b);
    b_str(&o, "}\n");
    write_all(1, o.b, o.n);
    return 1;
}
