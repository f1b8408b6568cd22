"""``consume --egl``: the reference EGL consumer. Each buffer is imported once (EGL_EXT_image_dma_buf_import,
with EGL_EXT_image_dma_buf_import_modifiers when offered) into an EGLImage bound to a GLES texture, reused
until the buffer is retired; each frame's whole picture is read back through GL (texture -> framebuffer
object -> glReadPixels) and compared with the same picture read through mmap.

Displays tried, in order: GBM on the card the HELLO names (Mesa's kms_swrast on a KMS-only device such as
VKMS: the import goes through PRIME on the consumer's own card fd), then Mesa's surfaceless platform
(llvmpipe). If no display offers dma-buf import, :func:`open_importer` returns the mmap importer and
says why (each display's reason), so the consumer states which path it took.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any

from vkmsremote.consumer.client import ConsumerFrame

EGL_EXTENSIONS = 0x3055
EGL_VENDOR = 0x3053
EGL_NONE = 0x3038
EGL_PLATFORM_GBM_KHR = 0x31D7
EGL_PLATFORM_SURFACELESS_MESA = 0x31DD
EGL_OPENGL_ES_API = 0x30A0
EGL_CONTEXT_CLIENT_VERSION = 0x3098
EGL_LINUX_DMA_BUF_EXT = 0x3270
EGL_WIDTH, EGL_HEIGHT = 0x3057, 0x3056
EGL_LINUX_DRM_FOURCC_EXT = 0x3271
_PLANE_ATTRS = [  # (fd, offset, pitch, modifier lo, modifier hi) per plane
    (0x3272, 0x3273, 0x3274, 0x3443, 0x3444),
    (0x3275, 0x3276, 0x3277, 0x3445, 0x3446),
    (0x3278, 0x3279, 0x327A, 0x3447, 0x3448),
    (0x3440, 0x3441, 0x3442, 0x3449, 0x344A),
]
DRM_FORMAT_MOD_INVALID = (1 << 56) - 1
GL_TEXTURE_2D = 0x0DE1
GL_FRAMEBUFFER = 0x8D40
GL_COLOR_ATTACHMENT0 = 0x8CE0
GL_FRAMEBUFFER_COMPLETE = 0x8CD5
GL_RGBA = 0x1908
GL_UNSIGNED_BYTE = 0x1401
GL_RENDERER = 0x1F01
GL_TEXTURE_MIN_FILTER, GL_TEXTURE_MAG_FILTER, GL_NEAREST = 0x2801, 0x2800, 0x2600


class MmapImporter:
    """The fallback: pixels through mmap only (what every consumer can do)."""

    path = "mmap"

    def __init__(self, why: str) -> None:
        self.why = why

    def read_back(self, frame: ConsumerFrame) -> dict[str, Any]:
        return {}

    def forget(self, buffer_id: int) -> None:
        pass

    def close(self) -> None:
        pass


class EglImporter:
    """A GLES 2 context on an EGL display offering dma-buf import; one EGLImage + texture per buffer."""

    def __init__(self, egl: Any, gles: Any, display: int, what: str, modifiers: bool, gbm: tuple[Any, Any, int]
                 | None) -> None:
        self.egl, self.gles, self.display = egl, gles, display
        self.modifiers = modifiers
        self._gbm = gbm
        self.path = "egl-dmabuf"
        self.why = what
        self._proc = {name: egl.eglGetProcAddress(name.encode()) for name in
                      ("eglCreateImageKHR", "eglDestroyImageKHR", "glEGLImageTargetTexture2DOES")}
        if not all(self._proc.values()):
            raise OSError("eglCreateImageKHR / glEGLImageTargetTexture2DOES missing")
        self._create_image = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                              ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))(
            self._proc["eglCreateImageKHR"])
        self._destroy_image = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)(
            self._proc["eglDestroyImageKHR"])
        self._target_texture = ctypes.CFUNCTYPE(None, ctypes.c_uint, ctypes.c_void_p)(
            self._proc["glEGLImageTargetTexture2DOES"])
        if not egl.eglBindAPI(EGL_OPENGL_ES_API):
            raise OSError("eglBindAPI(GLES) failed")
        attrs = (ctypes.c_int * 3)(EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE)
        self.context = egl.eglCreateContext(display, None, None, attrs)  # EGL_KHR_no_config_context
        if not self.context or not egl.eglMakeCurrent(display, None, None, self.context):
            raise OSError(f"no surfaceless GLES context (EGL error {egl.eglGetError():#x})")
        renderer = gles.glGetString(GL_RENDERER)
        self.why += f"; GL renderer {renderer.decode() if renderer else '?'}"
        self._images: dict[int, tuple[int, int, int]] = {}  # buffer id -> (EGLImage, texture, framebuffer)
        self.imports = 0

    def _import(self, frame: ConsumerFrame) -> tuple[int, int, int]:
        meta = frame.buffer.meta
        known = self._images.get(meta.buffer_id)
        if known is not None:
            return known
        attrs = [EGL_WIDTH, meta.width, EGL_HEIGHT, meta.height, EGL_LINUX_DRM_FOURCC_EXT, meta.fourcc]
        for i, plane in enumerate(meta.planes):
            fd_a, off_a, pitch_a, lo_a, hi_a = _PLANE_ATTRS[i]
            attrs += [fd_a, frame.buffer.fds[plane.fd_index], off_a, plane.offset, pitch_a, plane.pitch]
            if self.modifiers and meta.modifier != DRM_FORMAT_MOD_INVALID:
                attrs += [lo_a, meta.modifier & 0xFFFFFFFF, hi_a, meta.modifier >> 32]
        attrs.append(EGL_NONE)
        arr = (ctypes.c_int * len(attrs))(*[a if a < 1 << 31 else a - (1 << 32) for a in attrs])
        image = self._create_image(self.display, None, EGL_LINUX_DMA_BUF_EXT, None, arr)
        if not image:
            raise OSError(f"eglCreateImageKHR(EGL_LINUX_DMA_BUF_EXT) failed: EGL error {self.egl.eglGetError():#x}")
        gl = self.gles
        tex, fbo = ctypes.c_uint(), ctypes.c_uint()
        gl.glGenTextures(1, ctypes.byref(tex))
        gl.glBindTexture(GL_TEXTURE_2D, tex)
        gl.glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST)
        gl.glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST)
        self._target_texture(GL_TEXTURE_2D, image)
        gl.glGenFramebuffers(1, ctypes.byref(fbo))
        gl.glBindFramebuffer(GL_FRAMEBUFFER, fbo)
        gl.glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, tex, 0)
        status = gl.glCheckFramebufferStatus(GL_FRAMEBUFFER)
        if status != GL_FRAMEBUFFER_COMPLETE:
            raise OSError(f"the imported texture is not a complete framebuffer (status {status:#x})")
        self._images[meta.buffer_id] = (image, tex.value, fbo.value)
        self.imports += 1
        return self._images[meta.buffer_id]

    def read_back(self, frame: ConsumerFrame) -> dict[str, Any]:
        """Read the whole picture back through GL (glReadPixels from the imported texture) and compare it
        with the same picture through mmap: how many pixels differ (0: the import is the buffer)."""
        import numpy as np

        _, _, fbo = self._import(frame)
        gl = self.gles
        gl.glBindFramebuffer(GL_FRAMEBUFFER, fbo)
        gl.glFinish()
        x0, y0, w, h = frame.event.view
        rgba = (ctypes.c_uint8 * (w * h * 4))()  # GL_PACK_ALIGNMENT 4: rows of w * 4 bytes need no padding
        gl.glReadPixels(int(x0), int(y0), int(w), int(h), GL_RGBA, GL_UNSIGNED_BYTE, rgba)
        via_gl = np.frombuffer(memoryview(rgba).cast("B"), np.uint8).reshape(h, w, 4)  # R, G, B, A; the texture's rows top-down
        mapped = frame.buffer.mapped()
        with mapped.reading():
            differ = int(np.count_nonzero(np.any(via_gl[..., :3] != frame.pixels()[..., 2::-1], axis=2)))  # B,G,R,X
        return {"gl_equal": differ == 0, "gl_pixels": w * h, "gl_differ": differ, "egl_imports": self.imports}

    def forget(self, buffer_id: int) -> None:
        known = self._images.pop(buffer_id, None)
        if known is None:
            return
        image, tex, fbo = known
        self.gles.glDeleteFramebuffers(1, ctypes.byref(ctypes.c_uint(fbo)))
        self.gles.glDeleteTextures(1, ctypes.byref(ctypes.c_uint(tex)))
        self._destroy_image(self.display, image)

    def close(self) -> None:
        for buffer_id in list(self._images):
            self.forget(buffer_id)
        self.egl.eglMakeCurrent(self.display, None, None, None)
        self.egl.eglDestroyContext(self.display, self.context)
        self.egl.eglTerminate(self.display)
        if self._gbm is not None:
            lib, device, fd = self._gbm
            lib.gbm_device_destroy(device)
            os.close(fd)


def _load() -> tuple[Any, Any]:
    egl = ctypes.CDLL("libEGL.so.1")
    gles = ctypes.CDLL("libGLESv2.so.2")
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    egl.eglQueryString.restype = ctypes.c_char_p
    egl.eglQueryString.argtypes = [ctypes.c_void_p, ctypes.c_int]
    egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    egl.eglBindAPI.argtypes = [ctypes.c_uint]
    egl.eglCreateContext.restype = ctypes.c_void_p
    egl.eglCreateContext.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    egl.eglMakeCurrent.argtypes = [ctypes.c_void_p] * 4
    egl.eglDestroyContext.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    egl.eglTerminate.argtypes = [ctypes.c_void_p]
    gles.glGetString.restype = ctypes.c_char_p
    gles.glGetString.argtypes = [ctypes.c_uint]
    gles.glReadPixels.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                  ctypes.c_uint, ctypes.c_void_p]
    return egl, gles


def _display(egl: Any, platform: int, native: int | None) -> int:
    get = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
    if not get:
        raise OSError("no eglGetPlatformDisplayEXT")
    fn = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)(get)
    display = fn(platform, native, None)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if not display or not egl.eglInitialize(display, ctypes.byref(major), ctypes.byref(minor)):
        raise OSError("eglInitialize failed")
    return int(display)


def open_importer(card: str | None = None) -> EglImporter | MmapImporter:
    """The EGL importer on the first display that offers dma-buf import, else the mmap one saying why."""
    reasons = []
    try:
        egl, gles = _load()
    except OSError as exc:
        return MmapImporter(f"no EGL/GLES libraries: {exc}")
    candidates: list[tuple[str, int, Any]] = []
    if card:
        candidates.append((f"gbm on {card}", EGL_PLATFORM_GBM_KHR, card))
    candidates.append(("surfaceless", EGL_PLATFORM_SURFACELESS_MESA, None))
    for name, platform, native in candidates:
        gbm: tuple[Any, Any, int] | None = None
        try:
            handle = None
            if platform == EGL_PLATFORM_GBM_KHR:
                lib = ctypes.CDLL("libgbm.so.1")
                lib.gbm_create_device.restype = ctypes.c_void_p
                lib.gbm_create_device.argtypes = [ctypes.c_int]
                lib.gbm_device_destroy.argtypes = [ctypes.c_void_p]
                fd = os.open(native, os.O_RDWR | os.O_CLOEXEC)
                handle = lib.gbm_create_device(fd)
                if not handle:
                    os.close(fd)
                    raise OSError("gbm_create_device failed")
                gbm = (lib, handle, fd)
            display = _display(egl, platform, handle)
            extensions = (egl.eglQueryString(display, EGL_EXTENSIONS) or b"").decode().split()
            vendor = (egl.eglQueryString(display, EGL_VENDOR) or b"?").decode()
            if "EGL_EXT_image_dma_buf_import" not in extensions:
                egl.eglTerminate(display)
                raise OSError(f"{vendor} EGL offers no EGL_EXT_image_dma_buf_import "
                              f"({len(extensions)} display extensions)")
            return EglImporter(egl, gles, display, f"{name} ({vendor})",
                               "EGL_EXT_image_dma_buf_import_modifiers" in extensions, gbm)
        except OSError as exc:
            if gbm is not None:
                with contextlib.suppress(Exception):
                    gbm[0].gbm_device_destroy(gbm[1])
                os.close(gbm[2])
            reasons.append(f"{name}: {exc.strerror if isinstance(exc.strerror, str) else exc}")
    return MmapImporter("; ".join(reasons))
