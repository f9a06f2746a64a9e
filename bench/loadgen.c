/*
 * make bench: the load generator.  One thread, epoll, 127.0.0.1 only.
 *
 * Every line it sends is 64 bytes and names its connection and its number:
 *   "c000042 s000000000007 xxxx...x\n"
 * and every reply must be exactly PREFIX + that line (PREFIX is empty for
 * the echo and relay configs), in order, byte for byte.  Anything else is
 * an error; errors are counted, the first few printed, and the harness
 * marks the scenario broken.
 *
 * Modes:
 *   pipe  --clients N --depth K     N connections, K lines in flight each
 *                                   (K = 1: each waits for its reply)
 *   conn  --clients C               a new connection per line, C at a time
 *   idle  --clients N               N connections, one verified round trip
 *                                   each, then held open until stdin closes
 * --sources N: in conn mode, connect from N loopback addresses in turn
 *   (127.0.0.1 .. 127.0.0.N; default 64).  The generator closes first, so
 *   each connection leaves a TIME_WAIT behind on its side; from one source
 *   address the kernel's ephemeral port search (even ports first, reusing a
 *   TIME_WAIT only after 1 s) capped B32 at about 14 k conn/s (the number of
 *   even ports in net.ipv4.ip_local_port_range) with the generator's CPU
 *   going to __inet_hash_connect.  N = 1: from 127.0.0.1 as before.
 * --sink PORT: also listen on 127.0.0.1:PORT as the device the relay sends
 * to; each sink connection must carry exactly one of our lines, in order per
 * client, and a reply may only come back once its line reached the sink.
 *
 * Cost per message: one epoll ADD per connection (edge-triggered for both
 * directions, never modified), the replies of one recv verified and their
 * next lines written with one send, lines formatted without printf, no
 * allocation after start-up (sink connections come from a free list).
 *
 * Output (stdout): "window-start" and "window-end" lines around the measured
 * window (the harness reads the server's CPU time at each), then one JSON
 * line.  In idle mode: one JSON line when every connection is up, then it
 * waits for EOF on stdin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define LINE 64
#define MAXPREFIX 64
#define MAXSAMPLES 5
#define CONNECT_CAP 32
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { T_CLIENT, T_LISTEN, T_SINK };
enum { M_PIPE, M_CONN, M_IDLE };
enum { S_FREE, S_CONNECTING, S_OPEN, S_DEAD };
enum { P_START, P_WARM, P_WINDOW, P_DRAIN, P_DONE };

typedef struct {
    int type;
    int fd;
    int state;
    unsigned cid;
    uint64_t seq0;      /* number of this connection's first line */
    uint64_t sent, recvd;
    size_t rpos;        /* bytes of the current reply matched so far */
    int established;    /* first reply received */
    double *ts;         /* send times, ring of depth */
    char *out;
    size_t olen, ooff;
    uint64_t sink_next; /* next line number the sink should get from us */
} conn_t;

typedef struct sink {
    int type;
    int fd;
    size_t len;
    struct sink *next_free;
    char buf[2 * LINE];
} sink_t;

static const char *mode = "pipe";
static int mode_k = M_PIPE;
static int port, sink_port, nclients = 1, depth = 1, nsources = 64;
static unsigned next_source;
static sink_t *free_sinks;
static int nup; /* connections that got their first reply */
static double warmup = 0.5, seconds = 2.0;
static char prefix[MAXPREFIX + 1];
static size_t prefix_len;
static int ep;
static conn_t *conns;
static int phase = P_START;
static uint64_t replies, errors, misrouted, sink_ok, sink_errors;
static uint64_t next_conn_number;
static int connecting, started, dead;
static double *lat;
static size_t nlat, maxlat = 4000000;
static char samples[MAXSAMPLES][200];
static int nsamples;
static struct sockaddr_in addr;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

static void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void error(const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errors++;
    if (nsamples < MAXSAMPLES) {
        for (char *p = msg; *p; p++)
            if (*p < 32 || *p > 126 || *p == '"' || *p == '\\') *p = '?';
        strcpy(samples[nsamples++], msg);
        fprintf(stderr, "loadgen: %s\n", msg);
    }
}

static char line_template[LINE];

/* "c%06u s%012llu " + 'x' padding + LF, without printf */
static void build_line(char *line, unsigned cid, uint64_t seq) {
    memcpy(line, line_template, LINE);
    unsigned v = cid % 1000000;
    for (int i = 6; i >= 1; i--, v /= 10) line[i] = (char)('0' + v % 10);
    uint64_t s = seq % 1000000000000ULL;
    for (int i = 20; i >= 9; i--, s /= 10) line[i] = (char)('0' + s % 10);
}

static void init_template(void) {
    memset(line_template, 'x', LINE);
    memcpy(line_template, "c000000 s000000000000 ", 22);
    line_template[LINE - 1] = '\n';
}

static void show(char *dst, const char *src, size_t n) {
    size_t i;
    for (i = 0; i < n && i < 70; i++)
        dst[i] = (src[i] >= 32 && src[i] < 127) ? src[i] : '.';
    dst[i] = 0;
}

static void ep_set(int fd, void *ptr, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(ep, op, fd, &e) < 0) {
        perror("epoll_ctl");
        exit(2);
    }
}

static void conn_close(conn_t *c, int state) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    if (c->state == S_CONNECTING || (c->state == S_OPEN && !c->established))
        connecting--;
    c->state = state;
    if (state == S_DEAD) dead++;
}

static void flush(conn_t *c) {
    while (c->ooff < c->olen) {
        ssize_t n = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            error("send: %s", strerror(errno));
            conn_close(c, S_DEAD);
            return;
        }
        c->ooff += n;
    }
    /* what is left waits for EPOLLOUT: edge-triggered, it comes when the
       socket has room again after this EAGAIN */
    if (c->ooff == c->olen) c->ooff = c->olen = 0;
}

static void queue_line(conn_t *c, double t) {
    if (c->ooff > 0) { /* keep the buffer to the lines not yet written */
        memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
        c->olen -= c->ooff;
        c->ooff = 0;
    }
    build_line(c->out + c->olen, c->cid, c->seq0 + c->sent);
    c->olen += LINE;
    c->ts[c->sent % depth] = t;
    c->sent++;
}

static void start_conn(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        error("socket: %s", strerror(errno));
        c->state = S_DEAD;
        dead++;
        return;
    }
    int one = 1;
    if (mode_k != M_CONN) /* conn: one line per connection, nothing to delay */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (mode_k == M_CONN && nsources > 1) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + next_source++ % nsources);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            error("bind: %s", strerror(errno));
            close(fd);
            c->state = S_DEAD;
            dead++;
            return;
        }
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    c->sent = c->recvd = 0;
    c->rpos = c->olen = c->ooff = 0;
    c->established = 0;
    connecting++;
    started++;
    if (mode_k == M_CONN) {
        c->cid = (unsigned)(next_conn_number % 1000000);
        c->seq0 = next_conn_number++;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        error("connect: %s", strerror(errno));
        conn_close(c, S_DEAD);
        return;
    }
    ep_set(fd, c, EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET, EPOLL_CTL_ADD);
}

static void reply_done(conn_t *c, double t) {
    double l = t - c->ts[c->recvd % depth];
    c->recvd++;
    if (!c->established) {
        c->established = 1;
        connecting--;
        nup++;
    }
    if (phase == P_WINDOW) {
        replies++;
        if (lat == NULL) lat = malloc(maxlat * sizeof *lat);
        if (nlat < maxlat) lat[nlat++] = l;
    }
    if (mode_k == M_CONN) {
        conn_close(c, S_FREE);
        if (phase < P_DRAIN) start_conn(c);
        return;
    }
    /* queued only: on_client writes what one read's replies queued at once */
    if (mode_k == M_PIPE && phase < P_DRAIN) queue_line(c, t);
}

static void on_data(conn_t *c, const char *data, size_t n, double t) {
    char expect[MAXPREFIX + LINE];
    size_t rlen = prefix_len + LINE;
    while (n > 0 && c->state == S_OPEN) {
        if (c->recvd >= c->sent) {
            char got[80];
            show(got, data, n);
            error("c%06u: %zu unexpected bytes with no line in flight: %s", c->cid, n, got);
            conn_close(c, S_DEAD);
            return;
        }
        memcpy(expect, prefix, prefix_len);
        build_line(expect + prefix_len, c->cid, c->seq0 + c->recvd);
        size_t k = rlen - c->rpos < n ? rlen - c->rpos : n;
        if (memcmp(expect + c->rpos, data, k) != 0) {
            char got[80], want[80];
            show(got, data, k);
            show(want, expect + c->rpos, k);
            error("c%06u line %llu: wrong reply at byte %zu: got '%s' want '%s'", c->cid,
                  (unsigned long long)c->recvd, c->rpos, got, want);
            conn_close(c, S_DEAD);
            return;
        }
        c->rpos += k;
        data += k;
        n -= k;
        if (c->rpos == rlen) {
            c->rpos = 0;
            reply_done(c, t);
        }
    }
}

static void on_client(conn_t *c, uint32_t ev, double t) {
    if (c->state == S_CONNECTING) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            error("connect: %s", strerror(err ? err : ECONNRESET));
            conn_close(c, S_DEAD);
            return;
        }
        if (!(ev & EPOLLOUT)) return;
        c->state = S_OPEN;
        int k = mode_k == M_PIPE ? depth : 1;
        for (int i = 0; i < k; i++) queue_line(c, t);
        flush(c);
        if (c->state != S_OPEN) return;
    }
    if (ev & EPOLLOUT) flush(c);
    if (c->state != S_OPEN) return;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        static char buf[262144];
        for (;;) {
            ssize_t n = recv(c->fd, buf, sizeof buf, 0);
            if (n > 0) {
                on_data(c, buf, n, t);
                if (c->state != S_OPEN) return;
                if (c->olen > c->ooff) flush(c);
                if (c->state != S_OPEN) return;
                /* a short read took all there was; more data is a new edge.
                   A FIN behind it shows as EPOLLRDHUP: read on to the EOF. */
                if ((size_t)n < sizeof buf && !(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                    return;
                continue;
            }
            if (n < 0 && errno == EAGAIN) return;
            error("c%06u: server closed the connection (%s) with %llu of %llu replies",
                  c->cid, n < 0 ? strerror(errno) : "EOF", (unsigned long long)c->recvd,
                  (unsigned long long)c->sent);
            conn_close(c, S_DEAD);
            return;
        }
    }
}

static void sink_line(sink_t *s) {
    char want[LINE];
    unsigned cid;
    unsigned long long seq;
    if (s->len != LINE || sscanf(s->buf, "c%6u s%12llu ", &cid, &seq) != 2) {
        char got[80];
        show(got, s->buf, s->len);
        sink_errors++;
        error("sink: a device connection carried %zu bytes, not one line: '%s'", s->len, got);
        return;
    }
    build_line(want, cid, seq);
    if (memcmp(want, s->buf, LINE) != 0 || (int)cid >= nclients ||
        conns[cid].sink_next != seq) {
        misrouted++;
        sink_errors++;
        error("sink: line c%06u s%llu unexpected (misrouted or out of order)", cid, seq);
        return;
    }
    conns[cid].sink_next++;
    sink_ok++;
}

static void on_sink(sink_t *s) {
    for (;;) {
        ssize_t n = recv(s->fd, s->buf + s->len, sizeof s->buf - s->len, 0);
        if (n > 0) {
            s->len += n;
            if (s->len == sizeof s->buf) n = 0; /* too long: judge now */
            else continue;
        }
        if (n < 0 && errno == EAGAIN) return;
        if (n < 0) {
            sink_errors++;
            error("sink: %s", strerror(errno));
        } else {
            sink_line(s);
        }
        close(s->fd);
        s->next_free = free_sinks;
        free_sinks = s;
        return;
    }
}

static void on_listen(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno != EAGAIN) error("sink accept: %s", strerror(errno));
            return;
        }
        sink_t *s = free_sinks;
        if (s) free_sinks = s->next_free;
        else s = malloc(sizeof *s);
        s->type = T_SINK;
        s->fd = fd;
        s->len = 0;
        ep_set(fd, s, EPOLLIN, EPOLL_CTL_ADD);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (nlat == 0) return 0;
    size_t i = (size_t)(p / 100.0 * nlat + 0.999999);
    if (i < 1) i = 1;
    if (i > nlat) i = nlat;
    return lat[i - 1] * 1e6;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--mode pipe|conn|idle] [--clients N] [--depth K]\n"
            "               [--seconds T] [--warmup W] [--sink PORT] [--prefix STR]\n"
            "               [--sources N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--mode")) mode = v;
        else if (!strcmp(a, "--clients")) nclients = atoi(v);
        else if (!strcmp(a, "--depth")) depth = atoi(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--sink")) sink_port = atoi(v);
        else if (!strcmp(a, "--sources")) nsources = atoi(v);
        else if (!strcmp(a, "--prefix")) {
            if (strlen(v) > MAXPREFIX) usage();
            strcpy(prefix, v);
        } else usage();
        i++;
    }
    prefix_len = strlen(prefix);
    if (!port || nclients < 1 || depth < 1 || depth > 1024) usage();
    if (strcmp(mode, "pipe") && strcmp(mode, "conn") && strcmp(mode, "idle")) usage();
    if (nsources < 1 || nsources > 65534) usage();
    if (strcmp(mode, "pipe")) depth = 1;
    mode_k = !strcmp(mode, "pipe") ? M_PIPE : !strcmp(mode, "conn") ? M_CONN : M_IDLE;
    init_template();

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ep = epoll_create1(0);

    int listen_type = T_LISTEN, lfd = -1;
    if (sink_port) {
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = addr;
        sa.sin_port = htons(sink_port);
        if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
            perror("sink listen");
            return 2;
        }
        ep_set(lfd, &listen_type, EPOLLIN, EPOLL_CTL_ADD);
    }

    conns = calloc(nclients, sizeof *conns);
    for (int i = 0; i < nclients; i++) {
        conns[i].type = T_CLIENT;
        conns[i].fd = -1;
        conns[i].cid = i;
        conns[i].ts = calloc(depth, sizeof(double));
        conns[i].out = malloc((size_t)depth * LINE + LINE);
    }
    int is_conn = mode_k == M_CONN, is_idle = mode_k == M_IDLE;
    int next = 0;
    double t = now(), t_phase = t, t_start = t, cpu0 = 0, cpu_window = 0, wall_window = 0;
    static struct epoll_event evs[1024];
    while (phase != P_DONE) {
        /* open connections: pipe and idle ramp up CONNECT_CAP at a time */
        while (!is_conn && next < nclients && connecting < CONNECT_CAP)
            start_conn(&conns[next++]);
        if (is_conn && phase == P_START) {
            for (; next < nclients; next++) start_conn(&conns[next]);
        }
        int n = epoll_wait(ep, evs, 1024, 5);
        t = now();
        for (int i = 0; i < n; i++) {
            int type = *(int *)evs[i].data.ptr;
            if (type == T_CLIENT) on_client(evs[i].data.ptr, evs[i].events, t);
            else if (type == T_LISTEN) on_listen(lfd);
            else on_sink(evs[i].data.ptr);
        }
        int up = is_conn ? 0 : nup;
        switch (phase) {
        case P_START:
            if (is_conn || up + dead == nclients) {
                if (is_idle) {
                    phase = P_DONE;
                    break;
                }
                phase = P_WARM;
                t_phase = t;
            } else if (t - t_start > 60) {
                error("only %d of %d connections up after 60 s", up, nclients);
                phase = is_idle ? P_DONE : P_WARM;
                t_phase = t;
            }
            break;
        case P_WARM:
            if (t - t_phase >= warmup) {
                printf("window-start\n");
                fflush(stdout);
                t = now();
                cpu0 = cpu();
                phase = P_WINDOW;
                t_phase = t;
            }
            break;
        case P_WINDOW:
            if (t - t_phase >= seconds) {
                wall_window = t - t_phase;
                cpu_window = cpu() - cpu0;
                printf("window-end\n");
                fflush(stdout);
                phase = P_DRAIN;
                t_phase = t;
            }
            break;
        case P_DRAIN: {
            uint64_t missing = 0;
            for (int i = 0; i < nclients; i++)
                if (conns[i].state == S_OPEN || conns[i].state == S_CONNECTING)
                    missing += conns[i].sent - conns[i].recvd;
            if (missing == 0 || t - t_phase > 3) {
                if (missing)
                    error("%llu replies never came (3 s after the load stopped)",
                          (unsigned long long)missing);
                /* let the sink take what the relay sent last */
                if (sink_port && t - t_phase < 0.2) break;
                phase = P_DONE;
            }
            break;
        }
        }
    }
    if (sink_port) {
        for (int i = 0; i < nclients; i++)
            if (conns[i].sink_next < conns[i].seq0 + conns[i].recvd) {
                misrouted++;
                error("c%06u: %llu replies but the sink got %llu of its lines", i,
                      (unsigned long long)conns[i].recvd,
                      (unsigned long long)conns[i].sink_next);
            }
    }
    int up = 0;
    for (int i = 0; i < nclients; i++) up += conns[i].established;
    if (nlat) qsort(lat, nlat, sizeof *lat, cmp);
    printf("{\"mode\": \"%s\", \"clients\": %d, \"depth\": %d, \"connections_up\": %d,"
           " \"replies\": %llu, \"seconds\": %.4f, \"rate\": %.1f,"
           " \"p50_us\": %.1f, \"p99_us\": %.1f, \"errors\": %llu,"
           " \"sink_ok\": %llu, \"sink_errors\": %llu, \"misrouted\": %llu,"
           " \"gen_cpu_s\": %.4f, \"gen_wall_s\": %.4f, \"samples\": [",
           mode, nclients, depth, is_conn ? 0 : up, (unsigned long long)replies,
           wall_window, wall_window > 0 ? replies / wall_window : 0.0, pct(50), pct(99),
           (unsigned long long)errors, (unsigned long long)sink_ok,
           (unsigned long long)sink_errors, (unsigned long long)misrouted, cpu_window,
           wall_window);
    for (int i = 0; i < nsamples; i++) printf("%s\"%s\"", i ? ", " : "", samples[i]);
    printf("]}\n");
    fflush(stdout);
    if (is_idle) {
        char b[256];
        while (read(0, b, sizeof b) > 0) {
        }
    }
    return 0;
}
