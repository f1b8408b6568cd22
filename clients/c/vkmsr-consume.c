/* vkmsr-consume: the C twin of `vkmsremote consume --checksums` (same hello/buffer/frame lines).
 * usage: vkmsr-consume [NAME|PATH] [FRAMES]   (default XR-0, until the server stops)
 * VKMSR_CHECKSUMS=0 in the environment skips the checksums (crc32=-): for latency measurements. */
#include "vkmsremote-consumer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "XR-0";
    long frames = argc > 2 ? strtol(argv[2], NULL, 10) : -1;
    struct vkmsr_mapping m;
    struct vkmsr_consumer *c = vkmsr_connect(name, &m, 30000);
    if (!c) {
        fprintf(stderr, "vkmsr-consume: %s (%s)\n", vkmsr_connect_error(), strerror(errno));
        return errno == EACCES ? 4 : 1;
    }
    printf("hello name=%s card=%s connector=%s connector_id=%" PRIu32 " crtc_id=%" PRIu32 " width=%" PRIu32
           " height=%" PRIu32 " refresh_mhz=%" PRIu32 " active=%s\n", m.name, m.card, m.connector, m.connector_id,
           m.crtc_id, m.mode.width, m.mode.height, m.mode.refresh_mhz, m.mode.active ? "True" : "False");
    long seen = 0;
    struct vkmsr_event *ev = malloc(sizeof *ev);
    int status = 0;
    const char *sums = getenv("VKMSR_CHECKSUMS");
    int checksums = !(sums && strcmp(sums, "0") == 0);
    while (frames < 0 || seen < frames) {
        int r = vkmsr_next_event(c, ev, 30000);
        if (r <= 0) {
            if (!(r < 0 && errno == EPIPE)) {
                fprintf(stderr, "vkmsr-consume: %s (%s)\n", r == 0 ? "timed out" : vkmsr_last_error(c),
                        strerror(errno));
                status = 1;
            }
            break;
        }
        switch (ev->type) {
        case VKMSR_BUFFER:
            printf("buffer buffer=%" PRIu32 " fb=%" PRIu32 " width=%" PRIu32 " height=%" PRIu32 " fourcc=%" PRIu32
                   " modifier=%" PRIu64 " fds=%" PRIu32 "\n", ev->buffer->id, ev->buffer->fb_id, ev->buffer->width,
                   ev->buffer->height, ev->buffer->fourcc, ev->buffer->modifier, ev->buffer->n_fds);
            break;
        case VKMSR_FRAME:
            seen++;
            char crc[16] = "-";
            if (checksums)
                snprintf(crc, sizeof crc, "%08" PRIx32, vkmsr_frame_crc32(c, &ev->frame));
            printf("frame serial=%" PRIu64 " buffer=%" PRIu32 " fb=%" PRIu32 " vblank=%" PRIu64 " damage=%s%" PRIu32
                   " crc32=%s latency_ns=%" PRIu64 "\n", ev->frame.serial, ev->frame.buffer_id,
                   ev->buffer->fb_id, ev->frame.vblank_seq, ev->frame.flags & VKMSR_FULL_DAMAGE ? "full" : "",
                   ev->frame.n_rects, crc, ev->frame.received_ns - ev->frame.vblank_ns);
            break;
        case VKMSR_RETIRE:
            printf("retire buffer=%" PRIu32 "\n", ev->retired);
            break;
        case VKMSR_MODE:
            printf("mode width=%" PRIu32 " height=%" PRIu32 " refresh_mhz=%" PRIu32 " active=%s\n", ev->mode.width,
                   ev->mode.height, ev->mode.refresh_mhz, ev->mode.active ? "True" : "False");
            break;
        case VKMSR_BYE:
            printf("bye reason=%" PRIu32 " text=%s\n", ev->bye_reason, ev->bye_text);
            break;
        }
        fflush(stdout);
    }
    printf("end frames=%ld open_fds=%u\n", seen, vkmsr_open_fds(c));
    free(ev);
    vkmsr_close(c);
    return status;
}
