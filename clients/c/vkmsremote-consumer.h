/* vkmsremote consumer client library (C): find a virtual connector such as XR-0 by name, receive its
 * scanout buffers (dma-buf fds) once each, and hear every flip with its damage.
 * Wire protocol: docs/consumer-protocol.md (version 1). One .c, one .h; pkg-config name vkmsremote-consumer.
 *
 *   struct vkmsr_mapping m;
 *   struct vkmsr_consumer *c = vkmsr_connect("XR-0", &m, 5000);     // m: card path, connector, CRTC, mode
 *   struct vkmsr_event ev;
 *   while (vkmsr_next_event(c, &ev, -1) > 0) {
 *       if (ev.type == VKMSR_FRAME) {
 *           const struct vkmsr_buffer *b = vkmsr_buffer(c, ev.frame.buffer_id);  // b->fds[]: import into EGL
 *           ...ev.frame.rects[0 .. ev.frame.n_rects - 1]: what changed...
 *       }
 *   }
 *   vkmsr_close(c);
 *
 * The library closes a buffer's fds (and unmaps it) when the server retires it.
 */
#ifndef VKMSREMOTE_CONSUMER_H
#define VKMSREMOTE_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VKMSR_PROTOCOL_VERSION 1
#define VKMSR_MAX_PLANES 4
#define VKMSR_MAX_RECTS 256
#define VKMSR_MAX_BUFFERS 64
#define VKMSR_MAX_STRING 255

enum vkmsr_event_type {
    VKMSR_MODE = 2,
    VKMSR_BUFFER = 3,
    VKMSR_FRAME = 4,
    VKMSR_RETIRE = 5,
    VKMSR_BYE = 6,
};

enum vkmsr_frame_flags {
    VKMSR_FULL_DAMAGE = 1, /* everything may have changed; n_rects is 0 */
    VKMSR_NEW_BUFFER = 2,  /* another buffer than at the previous frame (a page flip) */
};

struct vkmsr_mode {
    uint32_t width, height, refresh_mhz;
    int active; /* 0: the CRTC is off, no frames until it is on */
};

struct vkmsr_mapping {
    char name[VKMSR_MAX_STRING + 1];      /* "XR-0" */
    char card[VKMSR_MAX_STRING + 1];      /* "/dev/dri/card0" */
    char connector[VKMSR_MAX_STRING + 1]; /* DRM connector name, "Virtual-1" */
    uint32_t connector_id, crtc_id, server_pid;
    struct vkmsr_mode mode;
};

struct vkmsr_buffer {
    uint32_t id, fb_id, width, height, fourcc;
    uint64_t modifier;
    uint32_t n_planes, n_fds;
    uint32_t pitch[VKMSR_MAX_PLANES], offset[VKMSR_MAX_PLANES], fd_index[VKMSR_MAX_PLANES];
    int fds[VKMSR_MAX_PLANES];       /* owned by the library until the buffer is retired */
    void *map[VKMSR_MAX_PLANES];     /* per fd, read-only; NULL until vkmsr_map */
    size_t map_size[VKMSR_MAX_PLANES];
};

struct vkmsr_rect {
    uint16_t x, y, w, h;
};

struct vkmsr_frame {
    uint32_t buffer_id, flags;
    uint64_t serial, vblank_seq, vblank_ns, sent_ns, received_ns; /* CLOCK_MONOTONIC ns */
    int32_t view_x, view_y;
    uint32_t view_w, view_h; /* the picture: this rectangle of the buffer */
    uint32_t n_rects;
    struct vkmsr_rect rects[VKMSR_MAX_RECTS]; /* view coordinates */
};

struct vkmsr_event {
    enum vkmsr_event_type type;
    struct vkmsr_mode mode;             /* VKMSR_MODE */
    const struct vkmsr_buffer *buffer;  /* VKMSR_BUFFER; VKMSR_FRAME: the buffer shown */
    struct vkmsr_frame frame;           /* VKMSR_FRAME */
    uint32_t retired;                   /* VKMSR_RETIRE: buffer id (its fds are closed already) */
    uint32_t bye_reason;                /* VKMSR_BYE */
    char bye_text[VKMSR_MAX_STRING + 1];
};

struct vkmsr_consumer;

/* The socket path of connector `name` ("XR-0"): $VKMSREMOTE_CONSUMER_DIR, $XDG_RUNTIME_DIR/vkmsremote,
 * /run/vkmsremote, in that order; a name containing '/' is taken as a path. 0, or -1 with errno. */
int vkmsr_find(const char *name, char *path, size_t path_size);

/* Connect and read the HELLO: `mapping` gets card, connector, CRTC and mode. NULL with errno on failure
 * (EACCES: the socket's group/mode does not allow this user; ECONNREFUSED: nobody serves it;
 * EPROTO: the server broke the protocol or refused; vkmsr_last_error() says more). */
struct vkmsr_consumer *vkmsr_connect(const char *name, struct vkmsr_mapping *mapping, int timeout_ms);

/* The next event: 1, 0 on timeout (timeout_ms >= 0), -1 on error or end (errno; EPIPE: the server
 * closed the connection; after VKMSR_BYE the next call returns -1 with EPIPE). */
int vkmsr_next_event(struct vkmsr_consumer *c, struct vkmsr_event *ev, int timeout_ms);

const struct vkmsr_buffer *vkmsr_buffer(struct vkmsr_consumer *c, uint32_t buffer_id);

/* Plane `plane` of a buffer mapped read-only (mapped once, unmapped on retire): a pointer to its first
 * pixel (offset applied), or NULL with errno. */
const uint8_t *vkmsr_map(struct vkmsr_consumer *c, uint32_t buffer_id, unsigned plane);

/* DMA_BUF_IOCTL_SYNC around CPU reads of a mapped buffer (no-ops for fds that are not dma-bufs). */
void vkmsr_begin_read(struct vkmsr_consumer *c, uint32_t buffer_id);
void vkmsr_end_read(struct vkmsr_consumer *c, uint32_t buffer_id);

int vkmsr_fd(const struct vkmsr_consumer *c);            /* poll it for POLLIN in your own loop */
unsigned vkmsr_open_fds(const struct vkmsr_consumer *c); /* buffer fds held now */
const char *vkmsr_last_error(const struct vkmsr_consumer *c);
const char *vkmsr_connect_error(void); /* why the last vkmsr_connect failed */
void vkmsr_close(struct vkmsr_consumer *c);

/* CRC-32 (as zlib's crc32) of a frame's picture rows (view_w * 4 bytes each, 32-bit formats): the same
 * number `vkmsremote consume --checksums` prints. */
uint32_t vkmsr_frame_crc32(struct vkmsr_consumer *c, const struct vkmsr_frame *f);

#ifdef __cplusplus
}
#endif
#endif
