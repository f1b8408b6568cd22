"""One root exception for vkmsremote; each subclass carries structured attributes.

The CLI maps these classes to exit codes in one table (vkmsremote.cli.EXIT_CODES); every message
says what went wrong and, where there is one, what to do about it (``hint``).
"""

from __future__ import annotations

import errno as errno_mod
import os
from typing import ClassVar


class VkmsRemoteError(Exception):
    """Root of every error vkmsremote raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(VkmsRemoteError):
    """The user asked for something that cannot be done as asked (bad option, unknown name)."""


class ProfileError(VkmsRemoteError):
    """A configfs profile (TOML) is malformed or violates VKMS's rules."""

    def __init__(self, message: str, *, path: str = "", hint: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message, hint=hint)


class PermissionDeniedError(VkmsRemoteError):
    """An operation needs privileges the process does not have."""


class VkmsUnavailableError(VkmsRemoteError):
    """The running kernel has no VKMS with configfs support, or configfs is not mounted."""


class DeviceStateError(VkmsRemoteError):
    """The VKMS device exists in a state that conflicts with what was asked (use --replace)."""


class TimeoutError_(VkmsRemoteError):
    """Something we waited for (a udev event, a DRM card, a VM) did not happen in time."""


class DrmError(VkmsRemoteError):
    """A DRM ioctl failed. ``errno`` and the DRM object id (if any) are kept."""

    def __init__(self, op: str, err: int, *, object_id: int | None = None, hint: str = "") -> None:
        self.op = op
        self.errno = err
        self.object_id = object_id
        what = f"{op}" + (f" on object {object_id}" if object_id is not None else "")
        super().__init__(f"{what} failed: {os.strerror(err)} ({errno_mod.errorcode.get(err, err)})", hint=hint)


class UnsupportedFormatError(VkmsRemoteError):
    """A framebuffer's format or modifier is one vkmsremote cannot read."""


class ProtocolError(VkmsRemoteError):
    """A protocol (RFB, HTTP, WebSocket) was broken; the connection is closed. Raise one of the two
    subclasses, which say whose fault it was (h11's split): :class:`RemoteProtocolError` (the peer's) or
    :class:`LocalProtocolError` (ours). ``blame()`` is the sentence logs use."""

    culprit: ClassVar[str] = "someone"

    def blame(self, peer: str = "the peer") -> str:
        """``"<who> broke the protocol: <what>"``, naming the peer as ``peer`` (e.g. "the client")."""
        return f"{peer if self.culprit == 'the peer' else self.culprit} broke the protocol: {self}"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the protocol (RFC 6143 for RFB) or exceed one of our caps."""

    culprit: ClassVar[str] = "the peer"


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a bug on our side, or something we cannot say within the
    protocol, such as a size change to a client without DesktopSize). Nothing invalid was sent."""

    culprit: ClassVar[str] = "we"


class HttpRequestError(RemoteProtocolError):
    """A web peer sent an HTTP request the web server refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int, hint: str = "") -> None:
        self.status = status
        super().__init__(message, hint=hint)


class AuthenticationError(VkmsRemoteError):
    """A VNC peer failed authentication."""


class VmError(VkmsRemoteError):
    """The test VM could not be built, booted, or did not finish in time."""


class InputDeviceError(VkmsRemoteError):
    """A uinput keyboard or pointer could not be created or written (no /dev/uinput, device gone)."""


class BrokerError(VkmsRemoteError):
    """The privileged capture broker could not start, exited, or broke its protocol with the server."""
