"""The one declaration of each option ``vkmsremote serve`` and ``vkmsremote up`` share (and that
``up --vm`` reads back to build the guest's command line).

One spelling per option: ``--listen HOST`` (``serve --host`` was its old spelling and still works,
hidden from --help). Only light modules are imported here (no numpy, no server): the CLI builds its
parser from this module.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vkmsremote.server import DEFAULT_PORT
from vkmsremote.server.credentials import PASSWORD_ENV, VIEW_ONLY_PASSWORD_ENV

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_WEB_PORT", "PASSWORD_ENV", "SECURITY_CHOICES",
           "VIEW_ONLY_PASSWORD_ENV", "add_listen_arguments", "add_password_arguments", "add_security_arguments",
           "has_full_password_source", "has_view_only_password_source", "port", "size"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 5800
"""vkmsremote.web.server's DEFAULT_WEB_PORT, not imported here: importing the web package (websockets) would
cost every CLI command ~0.4 s (a test compares)."""
SECURITY_CHOICES = ("none", "vncauth", "ra2", "ra2ne", "ra2_256", "ra2ne_256", "x509none", "x509vnc", "x509plain")
"""Names accepted by --security (TigerVNC's SecurityTypes spelling, case-insensitive): the keys of
vkmsremote.server.app.SECURITY_NAMES, not imported here to keep the CLI's start light (a test compares)."""


def size(text: str) -> tuple[int, int]:
    """argparse type of a WIDTHxHEIGHT option."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is empty")
    return w, h


def mode(text: str) -> tuple[int, int, float | None]:
    """argparse type of a WIDTHxHEIGHT[@HZ] mode option."""
    from vkmsremote.drm.cvt import parse_mode  # imported when used: the CLI's parser stays light
    from vkmsremote.errors import UsageError

    try:
        return parse_mode(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    """argparse type of a TCP port option (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def add_listen_arguments(group: argparse._ArgumentGroup, *, port_help: str = "VNC port") -> None:
    """--listen (old spelling --host, hidden), --port, --web [PORT]."""
    group.add_argument("--listen", default=DEFAULT_HOST, metavar="HOST",
                       help=f"address to listen on (default {DEFAULT_HOST}; anything else needs a password or "
                            "--insecure-listen)")
    group.add_argument("--host", dest="listen", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    group.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"{port_help} (default {DEFAULT_PORT})")
    group.add_argument("--web", type=port, nargs="?", const=DEFAULT_WEB_PORT, metavar="PORT",
                       help=f"also serve noVNC in a browser on PORT (default {DEFAULT_WEB_PORT}); https with a "
                       "self-signed certificate unless --listen is loopback")
    group.add_argument("--web-https", action="store_true",
                       help="serve the web page over https on loopback too (browsers need https for noVNC "
                       "anywhere but on localhost)")


def add_password_arguments(group: argparse._ArgumentGroup) -> None:
    """The password options (where they are read: vkmsremote.server.credentials)."""
    group.add_argument("--password", help="password; refused unless --allow-password-argument (a command line is "
                       f"visible to other users: use --password-file or ${PASSWORD_ENV}); VNC authentication uses "
                       "its first 8 bytes")
    group.add_argument("--password-file", type=Path,
                       help="file whose first line is the password (mode 0600 or stricter)")
    group.add_argument("--allow-password-argument", action="store_true",
                       help="accept --password although every local user can read a command line")
    group.add_argument("--view-only-password-file", type=Path, metavar="FILE",
                       help="file whose first line is a second password (or give it in "
                       f"${VIEW_ONLY_PASSWORD_ENV}) for clients that may only watch: no keyboard, pointer or "
                       "clipboard; needs the full-access password too")


def add_security_arguments(group: argparse._ArgumentGroup) -> None:
    """Passwords, --username, --security, TLS files, --insecure-listen, --view-only, --always-shared."""
    add_password_arguments(group)
    group.add_argument("--username", help="username for VeNCrypt X509Plain (which uses the whole password)")
    group.add_argument("--security", help="comma-separated security types in order of preference: "
                       + ", ".join(SECURITY_CHOICES)
                       + " (default: ra2_256,ra2,ra2ne_256,ra2ne,x509vnc,vncauth with a password, else none)")
    group.add_argument("--tls-cert", type=Path, help="PEM certificate for VeNCrypt and the web page (default: a "
                       "self-signed one, made on first use under ~/.config/vkmsremote/tls)")
    group.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    group.add_argument("--insecure-listen", action="store_true",
                       help="allow a non-loopback --listen without authentication")
    group.add_argument("--view-only", action="store_true", help="ignore keyboard, pointer and clipboard input "
                       "from every client (--view-only-password-file: from some)")
    group.add_argument("--always-shared", action="store_true",
                       help="never disconnect other clients when one asks for exclusive access")


def has_full_password_source(args: argparse.Namespace) -> bool:
    """True if the command line or the environment names a full-access password (without reading it)."""
    return bool(args.password is not None or args.password_file is not None or os.environ.get(PASSWORD_ENV))


def has_view_only_password_source(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "view_only_password_file", None) is not None or os.environ.get(VIEW_ONLY_PASSWORD_ENV))
