/* vkmsremote consumer client library: see vkmsremote-consumer.h and docs/consumer-protocol.md.
 * Every length from the socket is checked before use; a packet that breaks the protocol ends the
 * session (EPROTO) and the fds that came with it are closed. */
#define _GNU_SOURCE
#include "vkmsremote-consumer.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKET 4096
#define HEADER_SIZE 8
#define MAX_DIMENSION 16384
#define MSG_HELLO 1
#define DMA_BUF_SYNC_READ 1
#define DMA_BUF_SYNC_START 0
#define DMA_BUF_SYNC_END 4
#define DMA_BUF_IOCTL_SYNC_NR _IOW('b', 0, uint64_t)

struct vkmsr_consumer {
    int sock;
    int closed;
    struct vkmsr_buffer buffers[VKMSR_MAX_BUFFERS];
    int used[VKMSR_MAX_BUFFERS];
    uint64_t last_serial;
    int active;
    char error[256];
};

static char connect_error[256];

static void set_error(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, 256, fmt, ap);
    va_end(ap);
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int vkmsr_find(const char *name, char *path, size_t path_size) {
    if (!name || !*name || name[0] == '.' || strlen(name) > 64) {
        if (name && strchr(name, '/'))
            goto as_path;
        errno = EINVAL;
        return -1;
    }
    if (strchr(name, '/')) {
    as_path:
        if (strlen(name) >= path_size) {
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(path, name);
        return 0;
    }
    const char *dirs[3];
    char xdg[512] = "";
    int n = 0;
    const char *env = getenv("VKMSREMOTE_CONSUMER_DIR");
    if (env && *env)
        dirs[n++] = env;
    env = getenv("XDG_RUNTIME_DIR");
    if (env && *env && snprintf(xdg, sizeof xdg, "%s/vkmsremote", env) < (int)sizeof xdg)
        dirs[n++] = xdg;
    dirs[n++] = "/run/vkmsremote";
    for (int i = 0; i < n; i++) {
        struct stat st;
        int len = snprintf(path, path_size, "%s/%s.sock", dirs[i], name);
        if (len < 0 || (size_t)len >= path_size)
            continue;
        if (stat(path, &st) == 0)
            return 0;
    }
    errno = ENOENT;
    return -1;
}

static void close_fds(int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void release_buffer(struct vkmsr_consumer *c, int slot) {
    struct vkmsr_buffer *b = &c->buffers[slot];
    for (uint32_t i = 0; i < b->n_fds; i++) {
        if (b->map[i])
            munmap(b->map[i], b->map_size[i]);
        close(b->fds[i]);
    }
    memset(b, 0, sizeof *b);
    c->used[slot] = 0;
}

static int find_slot(const struct vkmsr_consumer *c, uint32_t id) {
    for (int i = 0; i < VKMSR_MAX_BUFFERS; i++)
        if (c->used[i] && c->buffers[i].id == id)
            return i;
    return -1;
}

/* A string field at *pos: u16 length + UTF-8 (not checked beyond "no NUL"). */
static int take_string(const uint8_t *body, size_t len, size_t *pos, char *out) {
    if (*pos + 2 > len)
        return -1;
    uint16_t n = rd16(body + *pos);
    *pos += 2;
    if (n > VKMSR_MAX_STRING || *pos + n > len || memchr(body + *pos, 0, n))
        return -1;
    memcpy(out, body + *pos, n);
    out[n] = 0;
    *pos += n;
    return 0;
}

static int parse_mode(const uint8_t *p, size_t len, struct vkmsr_mode *m) {
    if (len != 16)
        return -1;
    m->width = rd32(p);
    m->height = rd32(p + 4);
    m->refresh_mhz = rd32(p + 8);
    if (m->width > MAX_DIMENSION || m->height > MAX_DIMENSION || p[12] > 1)
        return -1;
    m->active = p[12];
    return 0;
}

/* Receive one packet: its type, body and fds. 1, 0 (timeout), -1 (errno). */
static int receive(struct vkmsr_consumer *c, uint8_t *packet, size_t *body_len, uint16_t *type, int *fds,
                   int *n_fds, int timeout_ms) {
    *n_fds = 0;
    if (c->closed) {
        errno = EPIPE;
        return -1;
    }
    struct pollfd pfd = {.fd = c->sock, .events = POLLIN};
    int r;
    do
        r = poll(&pfd, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return r;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * VKMSR_MAX_PLANES)];
    } control;
    struct iovec iov = {.iov_base = packet, .iov_len = MAX_PACKET + 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t got;
    do
        got = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                if (*n_fds < VKMSR_MAX_PLANES)
                    fds[(*n_fds)++] = fd;
                else
                    close(fd);
            }
        }
    }
    if (got == 0) {
        c->closed = 1;
        set_error(c->error, "the server closed the socket");
        errno = EPIPE;
        return -1;
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC) || got > MAX_PACKET || got < HEADER_SIZE) {
        set_error(c->error, "packet of %zd bytes, or truncated fds", got);
        goto bad;
    }
    *type = rd16(packet);
    if (rd16(packet + 2) != VKMSR_PROTOCOL_VERSION) {
        set_error(c->error, "protocol version %u (this library speaks %d)", rd16(packet + 2), VKMSR_PROTOCOL_VERSION);
        goto bad;
    }
    if (rd32(packet + 4) != (uint32_t)got - HEADER_SIZE) {
        set_error(c->error, "header announces %u body bytes, the packet has %zd", rd32(packet + 4), got - HEADER_SIZE);
        goto bad;
    }
    *body_len = (size_t)got - HEADER_SIZE;
    return 1;
bad:
    close_fds(fds, *n_fds);
    *n_fds = 0;
    errno = EPROTO;
    return -1;
}

static int parse_hello(struct vkmsr_consumer *c, const uint8_t *body, size_t len, struct vkmsr_mapping *m) {
    size_t pos = 0;
    if (take_string(body, len, &pos, m->name) || take_string(body, len, &pos, m->card) ||
        take_string(body, len, &pos, m->connector) || len - pos != 32) {
        set_error(c->error, "malformed HELLO");
        return -1;
    }
    m->connector_id = rd32(body + pos);
    m->crtc_id = rd32(body + pos + 4);
    m->server_pid = rd32(body + pos + 8);
    if (parse_mode(body + pos + 16, 16, &m->mode)) {
        set_error(c->error, "malformed HELLO mode");
        return -1;
    }
    c->active = m->mode.active;
    return 0;
}

struct vkmsr_consumer *vkmsr_connect(const char *name, struct vkmsr_mapping *mapping, int timeout_ms) {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    connect_error[0] = 0;
    if (vkmsr_find(name, path, sizeof path)) {
        int e = errno;
        set_error(connect_error, "no consumer socket for %s", name);
        errno = e;
        return NULL;
    }
    struct vkmsr_consumer *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->sock < 0) {
        free(c);
        return NULL;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, path);
    if (connect(c->sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        set_error(connect_error, "connect %s: %s", path, strerror(e));
        close(c->sock);
        free(c);
        errno = e;
        return NULL;
    }
    uint8_t packet[MAX_PACKET + 1];
    size_t len;
    uint16_t type;
    int fds[VKMSR_MAX_PLANES], n_fds;
    int r = receive(c, packet, &len, &type, fds, &n_fds, timeout_ms);
    if (r <= 0 || type != MSG_HELLO || n_fds || parse_hello(c, packet + HEADER_SIZE, len, mapping)) {
        int e = r == 0 ? ETIMEDOUT : r < 0 ? errno : EPROTO;
        if (r > 0 && type == VKMSR_BYE)
            set_error(c->error, "the server refused (BYE reason %u)", len >= 4 ? rd32(packet + HEADER_SIZE) : 0);
        else if (r > 0 && type != MSG_HELLO)
            set_error(c->error, "the server opened with message %u, not HELLO", type);
        set_error(connect_error, "%s", c->error[0] ? c->error : strerror(e));
        close_fds(fds, n_fds);
        close(c->sock);
        free(c);
        errno = e;
        return NULL;
    }
    return c;
}

const char *vkmsr_connect_error(void) { return connect_error; }

static int protocol_error(struct vkmsr_consumer *c, int *fds, int n_fds, const char *what) {
    if (what)
        set_error(c->error, "%s", what);
    close_fds(fds, n_fds);
    c->closed = 1;
    errno = EPROTO;
    return -1;
}

int vkmsr_next_event(struct vkmsr_consumer *c, struct vkmsr_event *ev, int timeout_ms) {
    uint8_t packet[MAX_PACKET + 1];
    size_t len;
    uint16_t type;
    int fds[VKMSR_MAX_PLANES], n_fds;
    int r = receive(c, packet, &len, &type, fds, &n_fds, timeout_ms);
    if (r <= 0)
        return r;
    const uint8_t *body = packet + HEADER_SIZE;
    memset(ev, 0, offsetof(struct vkmsr_event, frame) + offsetof(struct vkmsr_frame, rects));
    ev->type = (enum vkmsr_event_type)type;
    if (type != VKMSR_BUFFER && n_fds)
        return protocol_error(c, fds, n_fds, "fds with a message that carries none");
    switch (type) {
    case VKMSR_MODE:
        if (parse_mode(body, len, &ev->mode))
            return protocol_error(c, fds, n_fds, "malformed MODE");
        c->active = ev->mode.active;
        return 1;
    case VKMSR_BUFFER: {
        if (len < 32)
            return protocol_error(c, fds, n_fds, "short BUFFER");
        struct vkmsr_buffer b = {0};
        b.id = rd32(body);
        b.fb_id = rd32(body + 4);
        b.width = rd32(body + 8);
        b.height = rd32(body + 12);
        b.fourcc = rd32(body + 16);
        b.modifier = rd64(body + 20);
        b.n_planes = rd16(body + 28);
        b.n_fds = rd16(body + 30);
        if (b.n_planes < 1 || b.n_planes > VKMSR_MAX_PLANES || b.n_fds < 1 || b.n_fds > b.n_planes ||
            len != 32 + 12u * b.n_planes || (int)b.n_fds != n_fds || !b.width || !b.height ||
            b.width > MAX_DIMENSION || b.height > MAX_DIMENSION)
            return protocol_error(c, fds, n_fds, "malformed BUFFER (or its fd count differs from the fds sent)");
        unsigned seen = 0;
        for (uint32_t i = 0; i < b.n_planes; i++) {
            b.pitch[i] = rd32(body + 32 + 12 * i);
            b.offset[i] = rd32(body + 36 + 12 * i);
            b.fd_index[i] = rd32(body + 40 + 12 * i);
            if (b.fd_index[i] >= b.n_fds)
                return protocol_error(c, fds, n_fds, "BUFFER plane names a missing fd");
            seen |= 1u << b.fd_index[i];
        }
        if (seen != (1u << b.n_fds) - 1)
            return protocol_error(c, fds, n_fds, "BUFFER has an fd no plane uses");
        if (find_slot(c, b.id) >= 0)
            return protocol_error(c, fds, n_fds, "BUFFER sent twice without RETIRE");
        int slot = -1;
        for (int i = 0; i < VKMSR_MAX_BUFFERS && slot < 0; i++)
            if (!c->used[i])
                slot = i;
        if (slot < 0)
            return protocol_error(c, fds, n_fds, "too many buffers held");
        for (int i = 0; i < n_fds; i++)
            b.fds[i] = fds[i];
        c->buffers[slot] = b;
        c->used[slot] = 1;
        ev->buffer = &c->buffers[slot];
        return 1;
    }
    case VKMSR_FRAME: {
        struct vkmsr_frame *f = &ev->frame;
        if (len < 60)
            return protocol_error(c, fds, n_fds, "short FRAME");
        f->buffer_id = rd32(body);
        f->flags = rd32(body + 4);
        f->serial = rd64(body + 8);
        f->vblank_seq = rd64(body + 16);
        f->vblank_ns = rd64(body + 24);
        f->sent_ns = rd64(body + 32);
        f->view_x = (int32_t)rd32(body + 40);
        f->view_y = (int32_t)rd32(body + 44);
        f->view_w = rd32(body + 48);
        f->view_h = rd32(body + 52);
        f->n_rects = rd16(body + 56);
        f->received_ns = now_ns();
        if (f->n_rects > VKMSR_MAX_RECTS || len != 60 + 8u * f->n_rects || f->flags & ~3u || !f->view_w ||
            !f->view_h || f->view_w > MAX_DIMENSION || f->view_h > MAX_DIMENSION)
            return protocol_error(c, fds, n_fds, "malformed FRAME");
        for (uint32_t i = 0; i < f->n_rects; i++) {
            struct vkmsr_rect *rc = &f->rects[i];
            rc->x = rd16(body + 60 + 8 * i);
            rc->y = rd16(body + 62 + 8 * i);
            rc->w = rd16(body + 64 + 8 * i);
            rc->h = rd16(body + 66 + 8 * i);
            if (!rc->w || !rc->h || rc->x + rc->w > f->view_w || rc->y + rc->h > f->view_h)
                return protocol_error(c, fds, n_fds, "FRAME damage outside its view");
        }
        int slot = find_slot(c, f->buffer_id);
        if (slot < 0 || !c->active || (c->last_serial && f->serial <= c->last_serial))
            return protocol_error(c, fds, n_fds, "FRAME names an unknown buffer, comes while off, or goes back");
        c->last_serial = f->serial;
        ev->buffer = &c->buffers[slot];
        return 1;
    }
    case VKMSR_RETIRE: {
        if (len != 4)
            return protocol_error(c, fds, n_fds, "malformed RETIRE");
        int slot = find_slot(c, rd32(body));
        if (slot < 0)
            return protocol_error(c, fds, n_fds, "RETIRE of a buffer not held");
        ev->retired = rd32(body);
        release_buffer(c, slot);
        return 1;
    }
    case VKMSR_BYE: {
        size_t pos = 4;
        if (len < 4 || take_string(body, len, &pos, ev->bye_text) || pos != len)
            return protocol_error(c, fds, n_fds, "malformed BYE");
        ev->bye_reason = rd32(body);
        for (int i = 0; i < VKMSR_MAX_BUFFERS; i++)
            if (c->used[i])
                release_buffer(c, i);
        c->closed = 1;
        return 1;
    }
    default:
        return protocol_error(c, fds, n_fds, "unknown message type");
    }
}

const struct vkmsr_buffer *vkmsr_buffer(struct vkmsr_consumer *c, uint32_t buffer_id) {
    int slot = find_slot(c, buffer_id);
    return slot < 0 ? NULL : &c->buffers[slot];
}

const uint8_t *vkmsr_map(struct vkmsr_consumer *c, uint32_t buffer_id, unsigned plane) {
    int slot = find_slot(c, buffer_id);
    if (slot < 0 || plane >= c->buffers[slot].n_planes) {
        errno = ENOENT;
        return NULL;
    }
    struct vkmsr_buffer *b = &c->buffers[slot];
    uint32_t i = b->fd_index[plane];
    if (!b->map[i]) {
        off_t size = lseek(b->fds[i], 0, SEEK_END);
        if (size <= 0)
            return NULL;
        void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, b->fds[i], 0);
        if (p == MAP_FAILED)
            return NULL;
        b->map[i] = p;
        b->map_size[i] = (size_t)size;
    }
    uint64_t need = (uint64_t)b->offset[plane] + (uint64_t)b->pitch[plane] * (b->height - 1) + b->pitch[plane];
    if (need > b->map_size[i]) {
        errno = EOVERFLOW;
        return NULL;
    }
    return (const uint8_t *)b->map[i] + b->offset[plane];
}

static void sync_buffer(struct vkmsr_consumer *c, uint32_t buffer_id, uint64_t flags) {
    const struct vkmsr_buffer *b = vkmsr_buffer(c, buffer_id);
    for (uint32_t i = 0; b && i < b->n_fds; i++)
        ioctl(b->fds[i], DMA_BUF_IOCTL_SYNC_NR, &flags); /* ENOTTY for a non-dma-buf: nothing to sync */
}

void vkmsr_begin_read(struct vkmsr_consumer *c, uint32_t buffer_id) {
    sync_buffer(c, buffer_id, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
}

void vkmsr_end_read(struct vkmsr_consumer *c, uint32_t buffer_id) {
    sync_buffer(c, buffer_id, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
}

int vkmsr_fd(const struct vkmsr_consumer *c) { return c->sock; }

unsigned vkmsr_open_fds(const struct vkmsr_consumer *c) {
    unsigned n = 0;
    for (int i = 0; i < VKMSR_MAX_BUFFERS; i++)
        if (c->used[i])
            n += c->buffers[i].n_fds;
    return n;
}

const char *vkmsr_last_error(const struct vkmsr_consumer *c) { return c->error; }

void vkmsr_close(struct vkmsr_consumer *c) {
    if (!c)
        return;
    for (int i = 0; i < VKMSR_MAX_BUFFERS; i++)
        if (c->used[i])
            release_buffer(c, i);
    close(c->sock);
    free(c);
}

static uint32_t crc_table[256];

uint32_t vkmsr_frame_crc32(struct vkmsr_consumer *c, const struct vkmsr_frame *f) {
    if (!crc_table[1])
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t v = n;
            for (int k = 0; k < 8; k++)
                v = v & 1 ? 0xEDB88320u ^ (v >> 1) : v >> 1;
            crc_table[n] = v;
        }
    const struct vkmsr_buffer *b = vkmsr_buffer(c, f->buffer_id);
    const uint8_t *base = vkmsr_map(c, f->buffer_id, 0);
    if (!b || !base || f->view_x < 0 || f->view_y < 0 || f->view_x + f->view_w > b->width ||
        f->view_y + f->view_h > b->height)
        return 0;
    uint32_t crc = 0xFFFFFFFFu;
    vkmsr_begin_read(c, f->buffer_id);
    for (uint32_t y = 0; y < f->view_h; y++) {
        const uint8_t *row = base + (size_t)b->pitch[0] * (f->view_y + y) + 4u * (uint32_t)f->view_x;
        for (uint32_t x = 0; x < 4u * f->view_w; x++)
            crc = crc_table[(crc ^ row[x]) & 0xFF] ^ (crc >> 8);
    }
    vkmsr_end_read(c, f->buffer_id);
    return crc ^ 0xFFFFFFFFu;
}
