/*
 * bench_client: a minimal measuring VNC client for vkmsremote's benchmarks (scripts/bench_pipeline.py,
 * scripts/bench_peer.py). All RFB work (handshake, every decoder, Tight's JPEG) is LibVNCClient's,
 * a client library nobody here wrote; this file only times what arrives.
 *
 * Built at run time by vkmsremote.bench.client:
 *   cc -O2 -o bench_client bench_client.c -lvncclient -lavcodec -lavutil -lswscale
 *
 * usage: bench_client HOST PORT ENCODINGS QUALITY COMPRESS SECONDS
 *   ENCODINGS  LibVNCClient's encodings string, e.g. "tight" or "zrle" or "raw"; a leading "h264 " also
 *              announces Open H.264 (rfbproto encoding 50), which LibVNCClient does not know: it is
 *              registered as a client extension here and decoded by FFmpeg's libavcodec (one decoder
 *              context, reset on a new rectangle or the ResetContext/ResetAllContexts flags), converted
 *              to the framebuffer's format by libswscale.
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

#include <libavcodec/avcodec.h>
#include <libswscale/swscale.h>
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

/* --- Open H.264 (rfbproto "Open H.264 Encoding"): U32 length, U32 flags, Annex B data ------------------ */
#define OPEN_H264 50
static AVCodecContext *h264;
static AVFrame *h264_frame;
static AVPacket *h264_packet;
static struct SwsContext *h264_sws;
static int h264_x, h264_y, h264_w, h264_h;

static void h264_drop(void) {
    if (h264)
        avcodec_free_context(&h264);
}

static int h264_open(int x, int y, int w, int h) {
    h264_drop();
    const AVCodec *codec = avcodec_find_decoder(AV_CODEC_ID_H264);
    if (!codec || !(h264 = avcodec_alloc_context3(codec)))
        return 0;
    h264->flags |= AV_CODEC_FLAG_LOW_DELAY;
    h264->thread_count = 1;
    if (avcodec_open2(h264, codec, NULL) < 0)
        return 0;
    h264_x = x, h264_y = y, h264_w = w, h264_h = h;
    return 1;
}

static rfbBool handle_h264(rfbClient *cl, rfbFramebufferUpdateRectHeader *rect) {
    if (rect->encoding != OPEN_H264)
        return FALSE;
    rfbClient *client = cl;  /* rfbClientSwap32IfLE reads the byte order from a variable of this name */
    uint32_t head[2];
    if (!ReadFromRFBServer(cl, (char *)head, 8))
        return FALSE;
    uint32_t length = rfbClientSwap32IfLE(head[0]), flags = rfbClientSwap32IfLE(head[1]);
    uint8_t *data = av_malloc((size_t)length + AV_INPUT_BUFFER_PADDING_SIZE);
    if (!data || !ReadFromRFBServer(cl, (char *)data, length))
        return FALSE;
    memset(data + length, 0, AV_INPUT_BUFFER_PADDING_SIZE);
    int x = rect->r.x, y = rect->r.y, w = rect->r.w, h = rect->r.h;
    if ((flags & 3) || !h264 || x != h264_x || y != h264_y || w != h264_w || h != h264_h) {
        if (!h264_open(x, y, w, h)) {
            fprintf(stderr, "bench_client: cannot open FFmpeg's H.264 decoder\n");
            return FALSE;
        }
    }
    if (!h264_frame)
        h264_frame = av_frame_alloc(), h264_packet = av_packet_alloc();
    av_packet_from_data(h264_packet, data, (int)length);
    int sent = avcodec_send_packet(h264, h264_packet);
    av_packet_unref(h264_packet);
    if (sent < 0) {
        fprintf(stderr, "bench_client: the H.264 decoder refused a frame (%d)\n", sent);
        return FALSE;
    }
    while (avcodec_receive_frame(h264, h264_frame) == 0) {
        if (h264_frame->width != w || h264_frame->height != h)
            continue;
        h264_sws = sws_getCachedContext(h264_sws, w, h, h264_frame->format, w, h, AV_PIX_FMT_BGR0,
                                        SWS_POINT, NULL, NULL, NULL);
        uint8_t *dst[1] = { cl->frameBuffer + ((size_t)y * cl->width + x) * 4 };
        int dst_stride[1] = { cl->width * 4 };
        sws_scale(h264_sws, (const uint8_t *const *)h264_frame->data, h264_frame->linesize, 0, h, dst, dst_stride);
    }
    got_rect(cl, x, y, w, h);
    return TRUE;
}

static int h264_encodings[] = { OPEN_H264, 0 };
static rfbClientProtocolExtension h264_extension = { .encodings = h264_encodings, .handleEncoding = handle_h264 };

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
    const char *encodings = argv[3];
    if (strncmp(encodings, "h264 ", 5) == 0) {
        rfbClientRegisterExtension(&h264_extension);  /* announced after the string's encodings */
        encodings += 5;
    }
    cl->appData.encodingsString = encodings;
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
