"""Where a client's keyboard and pointer go: an InputSink (uinput in vkmsremote.input, or a recorder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class InputSink(Protocol):
    def key(self, keysym: int, down: bool) -> None:
        """An RFB KeyEvent (RFC 6143 7.5.4): an X11 keysym pressed or released."""
        ...

    def key_scancode(self, keysym: int, keycode: int, down: bool) -> None:
        """QEMU extended key event: ``keycode`` is an XT scancode (0xE0 prefix as 0x80|code)."""
        ...

    def pointer(self, x: int, y: int, buttons: int) -> None:
        """An RFB PointerEvent (RFC 6143 7.5.5): position in framebuffer pixels, button mask bits 0-7."""
        ...

    def clipboard(self, text: str) -> None:
        """ClientCutText, already decoded (Latin-1 per RFC 6143 7.5.6)."""
        ...


class NullSink:
    """Accepts and drops every event (view-only servers, tests)."""

    def key(self, keysym: int, down: bool) -> None:
        pass

    def key_scancode(self, keysym: int, keycode: int, down: bool) -> None:
        pass

    def pointer(self, x: int, y: int, buttons: int) -> None:
        pass

    def clipboard(self, text: str) -> None:
        pass


class RecordingSink:
    """Keeps every event as a tuple, in order (tests)."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def key(self, keysym: int, down: bool) -> None:
        self.events.append(("key", keysym, down))

    def key_scancode(self, keysym: int, keycode: int, down: bool) -> None:
        self.events.append(("scancode", keysym, keycode, down))

    def pointer(self, x: int, y: int, buttons: int) -> None:
        self.events.append(("pointer", x, y, buttons))

    def clipboard(self, text: str) -> None:
        self.events.append(("clipboard", text))


class WakingSink:
    """An InputSink that tells the frame source input arrived (it then looks at every vblank again:
    input is usually followed by a change on screen) before passing each event on."""

    def __init__(self, inner: Any, wake: Callable[[], None]) -> None:
        self.inner = inner
        self._wake = wake

    def key(self, keysym: int, down: bool) -> None:
        self._wake()
        self.inner.key(keysym, down)

    def key_scancode(self, keysym: int, keycode: int, down: bool) -> None:
        self._wake()
        self.inner.key_scancode(keysym, keycode, down)

    def pointer(self, x: int, y: int, buttons: int) -> None:
        self._wake()
        self.inner.pointer(x, y, buttons)

    def clipboard(self, text: str) -> None:
        self.inner.clipboard(text)

    def set_screen(self, width: int, height: int) -> None:
        set_screen = getattr(self.inner, "set_screen", None)
        if set_screen is not None:
            set_screen(width, height)

    def release_all(self) -> None:
        release = getattr(self.inner, "release_all", None)
        if release is not None:
            release()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
