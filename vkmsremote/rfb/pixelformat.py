"""The RFB PIXEL_FORMAT structure (RFC 6143 section 7.4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from vkmsremote.errors import RemoteProtocolError


@dataclass(frozen=True, slots=True)
class PixelFormat:
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">BBBBHHHBBB3x")

    @classmethod
    def from_bytes(cls, data: bytes) -> PixelFormat:
        bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs = cls.STRUCT.unpack(data)
        return cls(bpp, depth, be != 0, tc != 0, rmax, gmax, bmax, rs, gs, bs)

    def to_bytes(self) -> bytes:
        return self.STRUCT.pack(
            self.bits_per_pixel, self.depth, int(self.big_endian), int(self.true_colour),
            self.red_max, self.green_max, self.blue_max,
            self.red_shift, self.green_shift, self.blue_shift,
        )

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    def validate(self) -> None:
        """Raise RemoteProtocolError unless this is a format a server can honour (RFC 6143 7.4).

        bits-per-pixel must be 8, 16 or 32; depth at most bits-per-pixel; for true colour every maximum
        must be 2**n - 1 and each channel must fit inside bits-per-pixel at its shift.
        """
        if self.bits_per_pixel not in (8, 16, 32):
            raise RemoteProtocolError(f"bits-per-pixel {self.bits_per_pixel} is not 8, 16 or 32")
        if not 1 <= self.depth <= self.bits_per_pixel:
            raise RemoteProtocolError(f"depth {self.depth} does not fit bits-per-pixel {self.bits_per_pixel}")
        if not self.true_colour:
            if self.bits_per_pixel != 8:
                raise RemoteProtocolError("a colour-map pixel format must have 8 bits per pixel")
            return
        for name, mx, shift in (("red", self.red_max, self.red_shift),
                                ("green", self.green_max, self.green_shift),
                                ("blue", self.blue_max, self.blue_shift)):
            if mx == 0 or (mx & (mx + 1)) != 0:
                raise RemoteProtocolError(f"{name}-max {mx} is not 2**n - 1")
            if shift + mx.bit_length() > self.bits_per_pixel:
                raise RemoteProtocolError(f"{name} channel (max {mx}, shift {shift}) exceeds {self.bits_per_pixel} bits")


# The format every frame source delivers and the server announces in ServerInit: 32 bpp, depth 24,
# little-endian, red at bit 16, i.e. DRM_FORMAT_XRGB8888 (bytes B, G, R, X in memory).
NATIVE = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)
