"""Where the server's secrets come from, and the checks on the files that hold them.

A password is read from a file (``--password-file``, e.g. a systemd credential) or from the environment
(``VKMSREMOTE_PASSWORD``, removed from the environment once read so child processes do not inherit it).
A password on the command line is refused unless explicitly allowed: every local user can read
``/proc/<pid>/cmdline``.

A second, view-only password (``--view-only-password-file`` or ``VKMSREMOTE_VIEW_ONLY_PASSWORD``, under
the same rules; never on the command line) lets clients watch without input, as TigerVNC's vncpasswd
file's second password does. It needs a full-access password and must differ from it.

Files holding secrets (the password file, the TLS private key) must not be readable or writable by group
or others and must belong to this user or root; a certificate is public, but must not be writable by
group or others (whoever can replace it can impersonate the server). Anything else is refused with the
chmod that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vkmsremote.errors import UsageError

PASSWORD_ENV = "VKMSREMOTE_PASSWORD"
VIEW_ONLY_PASSWORD_ENV = "VKMSREMOTE_VIEW_ONLY_PASSWORD"
MAX_PASSWORD_FILE = 4096
"""A password file longer than this is not a password file."""


def check_file(path: Path, what: str, *, secret: bool, st: os.stat_result | None = None) -> None:
    """Raise UsageError unless ``path`` is a regular file with safe ownership and permissions."""
    if st is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UsageError(f"{what} {path} does not exist") from None
        except OSError as e:
            raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"the {what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    loose = mode & (0o077 if secret else 0o022)
    if loose:
        who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if loose & bits)
        how = "readable or writable" if secret else "writable"
        fix = f"chmod 600 {path}" if secret else f"chmod go-w {path}"
        raise UsageError(f"the {what} {path} is {how} by {who} (mode {mode:04o}); refusing to use it",
                         hint=f"run `{fix}`")
    if st.st_uid not in (0, os.geteuid()):
        raise UsageError(f"the {what} {path} belongs to uid {st.st_uid}, who could change it; refusing to use it",
                         hint=f"make it yours or root's: chown {os.geteuid()} {path}")


def read_password_file(path: Path, what: str = "password file") -> str:
    """The first line of ``path`` after checking the open file's permissions (no race with a chmod)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"the {what} {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        check_file(path, what, secret=True, st=os.fstat(f.fileno()))
        data = f.read(MAX_PASSWORD_FILE + 1)
    if len(data) > MAX_PASSWORD_FILE:
        raise UsageError(f"the {what} {path} is longer than {MAX_PASSWORD_FILE} bytes",
                         hint="its first line is the password; nothing else belongs in it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} {path} is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise UsageError(f"the {what} {path} is empty")
    return lines[0]


def password_from(password_file: Path | None, argument: str | None, *,
                  allow_argument: bool | None = False) -> str | None:
    """The password: from the file, else the command-line argument (only if allowed), else the environment.

    ``allow_argument`` None: the command has no --allow-password-argument, so the refusal does not offer it.
    """
    if password_file is not None:
        return read_password_file(password_file)
    if argument is not None:
        if not allow_argument:
            override = "" if allow_argument is None else "; --allow-password-argument accepts it anyway"
            raise UsageError("--password would show the password to every local user (/proc/<pid>/cmdline "
                             "and ps)", hint=f"use --password-file FILE (mode 0600) or ${PASSWORD_ENV}{override}")
        return argument
    value = os.environ.pop(PASSWORD_ENV, None)  # not inherited by anything this process starts
    return value or None


def view_only_password_from(password_file: Path | None, password: str | None) -> str | None:
    """The view-only password: from the file, else the environment (removed from it once read); None if
    neither is set. ``password`` is the full-access one: without it, or equal to it, a view-only password
    is refused."""
    from_env = os.environ.pop(VIEW_ONLY_PASSWORD_ENV, None)  # not inherited by anything this process starts
    if password_file is not None:
        value: str | None = read_password_file(password_file, "view-only password file")
    else:
        value = from_env or None
    if value is None:
        return None
    if password is None:
        raise UsageError("a view-only password needs a full-access password as well",
                         hint=f"give --password-file FILE (or ${PASSWORD_ENV}) too")
    if value == password:
        raise UsageError("the view-only password is the full-access password: every client would get full access",
                         hint="choose a different view-only password")
    return value
