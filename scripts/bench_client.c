/*
 * bench_client: a minimal measuring VNC client for vkmsremote's benchmarks (scripts/bench_pipeline.py,
 * scripts/bench_peer.py). All RFB work (handshake, every decoder, Tight's JPEG) is LibVNCClient's,
 * a client library nobody here wrote; this file only times what arrives.
 *
 * Built at run time by vkmsremote.bench.client:  cc -O2 -o bench_client bench_client.c -lvncclient
 *
 * usage: bench_client HOST PORT ENCODINGS QUALITY COMPRESS SECONDS
 *   ENCODINGS  LibVNCClient's encodings string, e.g. "tight" or "zrle" or "raw"
 *   QUALITY    JPEG quality level 0-9, or -1 for no JPEG (no quality pseudo-encoding is sent)
 *   COMPRESS   compression level 0-9
 *   SECONDS    stop this long after the first complete update
 *
 * The pixel format asked for is 32 bpp, depth 24, little-endian, red at bit 16 (X servers' and
 * DRM XRGB8888's native order), so neither server under test has to translate pixels.
 * LibVNCClient sends the next incremental FramebufferUpdateRequest as soon as an update has been
 * decoded (one request in flight), as viewers built on it (Remmina, ...) do.
 *
 * Output on stdout, one line each:
 *   I <width> <height>                                   after the handshake
 *   U <t_ns> <number> <bytes> <rects> <pixels>          after every FramebufferUpdate
 *   E <t_ns> <updates> <bytes>                          at the end
 * t_ns is CLOCK_MONOTONIC (the clock Python's time.monotonic() reads, so the harness can compare it with
 * page-flip times); <number> is the frame number drawn in the top-left corner of the framebuffer by
 * vkmsremote.capture.driver.encode_frame_number (-1 if it is not readable there); <bytes> counts every
 * byte received on the connection so far (TCP_INFO tcpi_bytes_received); <rects> and <pixels> are this
 * update's pixel rectangles and their area.
 */
#include <rfb/rfbclient.h>

#include <linux/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* Must match vkmsremote/capture/driver.py: 2 bands of 32 cells of 16x16 pixels, MSB first, white = 1,
 * the second band the complement of the first. */
#define CELL 16
#define BITS 32

static long long updates, rects_in_update, pixels_in_update;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned long long bytes_received(rfbClient *cl) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    if (getsockopt(cl->sock, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return 0;
    return info.tcpi_bytes_received;
}

/* The mean luminance (mean of B, G, R) of one cell's central 8x8 pixels. */
static double cell_mean(const uint8_t *fb, int stride, int band, int bit) {
    double sum = 0;
    for (int y = band * CELL + 4; y < band * CELL + 12; y++) {
        const uint8_t *row = fb + (size_t)y * stride;
        for (int x = bit * CELL + 4; x < bit * CELL + 12; x++)
            sum += (row[4 * x] + row[4 * x + 1] + row[4 * x + 2]) / 3.0;
    }
    return sum / 64.0;
}

static long long frame_number(rfbClient *cl) {
    if (cl->width < CELL * BITS || cl->height < 2 * CELL || !cl->frameBuffer)
        return -1;
    const uint8_t *fb = cl->frameBuffer;
    int stride = cl->width * 4;
    unsigned long long number = 0;
    for (int bit = 0; bit < BITS; bit++) {
        double v = cell_mean(fb, stride, 0, bit), c = cell_mean(fb, stride, 1, bit);
        int one = v > 170 && c < 85, zero = v < 85 && c > 170;
        if (!one && !zero)
            return -1;
        number = (number << 1) | (unsigned)one;
    }
    return (long long)number;
}

static void got_rect(rfbClient *cl, int x, int y, int w, int h) {
    (void)cl; (void)x; (void)y;
    rects_in_update++;
    pixels_in_update += (long long)w * h;
}

static void finished(rfbClient *cl) {
    updates++;
    printf("U %lld %lld %llu %lld %lld\n", now_ns(), frame_number(cl), bytes_received(cl), rects_in_update,
           pixels_in_update);
    rects_in_update = pixels_in_update = 0;
}

static void quiet(const char *format, ...) { (void)format; }

static void to_stderr(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT ENCODINGS QUALITY COMPRESS SECONDS\n", argv[0]);
        return 2;
    }
    rfbClientLog = quiet;
    rfbClientErr = to_stderr;
    rfbClient *cl = rfbGetClient(8, 3, 4);
    cl->format.bitsPerPixel = 32;
    cl->format.depth = 24;
    cl->format.bigEndian = 0;
    cl->format.trueColour = 1;
    cl->format.redMax = cl->format.greenMax = cl->format.blueMax = 255;
    cl->format.redShift = 16;
    cl->format.greenShift = 8;
    cl->format.blueShift = 0;
    cl->appData.encodingsString = argv[3];
    int quality = atoi(argv[4]);
    cl->appData.enableJPEG = quality >= 0;
    cl->appData.qualityLevel = quality >= 0 ? quality : 0;
    cl->appData.compressLevel = atoi(argv[5]);
    cl->appData.useRemoteCursor = FALSE;
    double seconds = atof(argv[6]);
    cl->GotFrameBufferUpdate = got_rect;
    cl->FinishedFrameBufferUpdate = finished;
    cl->serverHost = strdup(argv[1]);
    cl->serverPort = atoi(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!rfbInitClient(cl, NULL, NULL)) {  /* frees cl on failure */
        fprintf(stderr, "bench_client: cannot connect to %s port %s\n", argv[1], argv[2]);
        return 3;
    }
    printf("I %d %d\n", cl->width, cl->height);
    long long deadline = 0, started = now_ns();
    for (;;) {
        long long t = now_ns();
        if (deadline && t >= deadline)
            break;
        if (!deadline && updates > 0)
            deadline = t + (long long)(seconds * 1e9);
        /* A message may already sit in LibVNCClient's read buffer, where select() cannot see it. */
        if (cl->buffered == 0) {
            int ready = WaitForMessage(cl, 100000);
            if (ready < 0) {
                fprintf(stderr, "bench_client: waiting for the server failed\n");
                return 4;
            }
            if (ready == 0) {
                if (updates == 0 && now_ns() - started > 300000000000LL) {
                    fprintf(stderr, "bench_client: no update within 300 s\n");
                    return 5;
                }
                continue;
            }
        }
        if (!HandleRFBServerMessage(cl)) {
            fprintf(stderr, "bench_client: the connection ended\n");
            return 6;
        }
    }
    printf("E %lld %lld %llu\n", now_ns(), updates, bytes_received(cl));
    rfbClientCleanup(cl);
    return 0;
}
