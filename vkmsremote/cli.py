"""``vkmsremote`` command line: parses arguments and calls the library; nothing else.

Errors are printed as one line, ``vkmsremote: <what went wrong> (<what to do>)``, and mapped to an
exit status by EXIT_CODES (the most specific class in an exception's MRO wins).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vkmsremote import __version__
from vkmsremote.errors import (
    DeviceStateError,
    DrmError,
    PermissionDeniedError,
    ProfileError,
    TimeoutError_,
    UsageError,
    VkmsRemoteError,
    VkmsUnavailableError,
)

EXIT_CODES: dict[type[BaseException], int] = {
    VkmsRemoteError: 1,
    UsageError: 2,  # also argparse's own status for bad arguments
    ProfileError: 3,
    PermissionDeniedError: 4,
    VkmsUnavailableError: 5,
    DeviceStateError: 6,
    TimeoutError_: 7,
    DrmError: 8,
    KeyboardInterrupt: 130,
}
"""Exception class -> exit status. Subclasses not listed use their nearest listed base."""

_GLOBAL_VALUE_OPTIONS = ("--configfs-root", "--state-dir")


def exit_code(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def command_arguments(argv: Sequence[str]) -> list[str]:
    """The arguments after the command word (``up`` in ``--state-dir D up --vm``), as the user wrote them."""
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a in _GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-"):
            return list(argv[i + 1:])
    return []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vkmsremote",
        description="A real KMS connector (XR-0) made with VKMS through configfs, served over VNC.",
    )
    p.add_argument("--version", action="version", version=f"vkmsremote {__version__}")
    p.add_argument("--configfs-root", metavar="DIR",
                   help="configfs mount point (default: $VKMSREMOTE_CONFIGFS_ROOT or /sys/kernel/config)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where up records what it made (default: $VKMSREMOTE_STATE_DIR or /run/vkmsremote)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="create XR-0 (the VKMS device of a profile), print the mapping and serve it",
                        description="Create the profile's VKMS device in configfs (loading vkms and mounting "
                        "configfs if needed), enable it, wait for its DRM card and print which DRM connector "
                        "each configfs connector became; running it again changes nothing. Then serve the "
                        "connector's CRTC over VNC until Ctrl-C (unless --no-serve): a small privileged "
                        "capture broker exports the framebuffers, the network-facing process runs as --user "
                        "without capabilities.")
    up.add_argument("--profile", "-p", metavar="NAME|FILE",
                    help="profile name (xr-0, xr-dual) or TOML file (default: xr-0)")
    up.add_argument("--replace", action="store_true",
                    help="rebuild a device of the same name that has a different layout")
    up.add_argument("--dry-run", "-n", action="store_true", help="print the equivalent shell commands; change nothing")
    up.add_argument("--default-device", action="store_true",
                    help="use VKMS's default device (loading vkms with one) instead of configfs, as on kernels "
                         "before 6.19 where it is the fallback: one connector, mapped to XR-0")
    up.add_argument("--timeout", type=float, default=20.0, metavar="S",
                    help="seconds to wait for the DRM card (default 20)")
    up.add_argument("--json", action="store_true", help="print the mapping as JSON")
    from vkmsremote.service.up import add_arguments as add_serving_arguments

    add_serving_arguments(up)

    down = sub.add_parser("down", help="remove exactly what up made, in the kernel's order",
                          description="Disable, unlink, remove items, remove the device: only what "
                          "`vkmsremote up` recorded making (all recorded devices unless one is named).")
    down.add_argument("device", nargs="?", help="device name (default: every device up made)")
    down.add_argument("--force", action="store_true",
                      help="remove the whole device even if vkmsremote did not make it")
    down.add_argument("--dry-run", "-n", action="store_true", help="print the equivalent shell commands; change nothing")

    st = sub.add_parser("status", help="configfs and DRM views of the VKMS devices, side by side")
    st.add_argument("device", nargs="?", help="only this device")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    hp = sub.add_parser("hotplug", help="connect or disconnect a connector (writes its configfs status)",
                        description="Write the connector's configfs status and wait for the udev change "
                        "event on its card; then check that DRM reports the new status.")
    hp.add_argument("connector", help="configfs connector name, e.g. XR-0")
    how = hp.add_mutually_exclusive_group(required=True)
    how.add_argument("--disconnect", dest="connect", action="store_false", help="unplug it")
    how.add_argument("--connect", dest="connect", action="store_true", help="plug it back in")
    hp.add_argument("--device", help="the device holding the connector (needed only if several have it)")
    hp.add_argument("--timeout", type=float, default=20.0, metavar="S",
                    help="seconds to wait for the udev event (default 20)")
    hp.add_argument("--json", action="store_true", help="print the connector's mapping as JSON")

    op = sub.add_parser("output", help="outputs on demand: connect a pooled connector and have the compositor "
                        "light it (add), or turn it off and disconnect it (remove)",
                        description="VKMS cannot give an enabled device a new connector; a profile holds a pool "
                        "of connectors created disconnected (configfs/xr-pool.toml). `add` connects one (hotplug) "
                        "and asks the compositor that drives the card to light it (Xorg: RandR; sway lights it "
                        "itself); `remove` turns it off there and disconnects it.")
    op_sub = op.add_subparsers(dest="output_action", required=True, metavar="add|remove")
    for action in ("add", "remove"):
        a = op_sub.add_parser(action, help=("connect and light" if action == "add" else "turn off and disconnect")
                              + " a connector of the pool, e.g. XR-1")
        a.add_argument("connector", help="configfs connector name, e.g. XR-1")
        if action == "add":
            from vkmsremote.service.options import mode

            a.add_argument("--mode", type=mode, metavar="WxH[@Hz]",
                           help="the output's mode, any size and rate (default: the compositor's choice)")
        a.add_argument("--device", help="the device holding the connector (needed only if several have it)")
        a.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the compositor (default 30)")
        a.add_argument("--json", action="store_true", help="print the result as JSON")

    co = sub.add_parser("consume", help="a local consumer of XR-0's consumer socket (reference client)",
                        description="Connect to a connector's consumer socket as an ordinary user, receive its "
                        "buffers once and every frame with its damage (docs/consumer-protocol.md).")
    from vkmsremote.consumer.options import add_consume_arguments

    add_consume_arguments(co)

    from vkmsremote.service import serve

    sp = sub.add_parser("serve", help="serve a test pattern or a DRM CRTC over VNC (no VKMS device needed)",
                        description=serve.DESCRIPTION)
    serve.add_arguments(sp)
    return p


def _configfs(args: argparse.Namespace) -> Any:
    from vkmsremote.vkms.configfs import Configfs

    return Configfs(args.configfs_root)


def _state(args: argparse.Namespace, cfs: Any) -> Any:
    from vkmsremote.vkms.state import StateStore

    return StateStore(args.state_dir, configfs=cfs)


def _print_mapping(m: Any, out: Any) -> None:
    for c in m.connectors:
        if c.connector_id is None:
            print(f"{c.name} -> (no DRM connector: {m.note})", file=out)
            continue
        crtc = f"CRTC {c.crtc_id}" if c.crtc_id is not None else "CRTC ?"
        modes = f"{c.preferred_mode or '-'} ({len(c.modes)} modes)"
        print(f"{c.name} -> {m.card}  {c.drm_name}  connector {c.connector_id}  {crtc}  {c.drm_status}  {modes}",
              file=out)


def _print_status(devices: list[Any], out: Any) -> None:
    if not devices:
        print("no VKMS devices in configfs (create one with `vkmsremote up`)", file=out)
    for m in devices:
        lay = m.observed.layout
        state = "enabled" if m.enabled else "disabled"
        owner = "made by vkmsremote up" if m.managed else "not made by vkmsremote"
        print(f"{m.name}: {m.configfs_path} ({state}, {owner})  card: {m.card or '-'}", file=out)
        print("  configfs                                      | DRM", file=out)
        for k, c in zip(lay.connectors, m.connectors, strict=True):
            left = f"connectors/{k.name} {c.configfs_status} -> {','.join(k.possible_encoders)}"
            if c.connector_id is None:
                right = "-"
            else:
                crtc = c.crtc_id if c.crtc_id is not None else "?"
                right = (f"{c.drm_name} id {c.connector_id} {c.drm_status} CRTC {crtc} "
                         f"{c.preferred_mode or '-'} (+{max(len(c.modes) - 1, 0)} modes)")
            print(f"  {left:<45} | {right}", file=out)
        planes = ", ".join(f"{p.name}({p.type.name.lower()}->{','.join(p.possible_crtcs)})" for p in lay.planes)
        crtcs = ", ".join(f"{c.name}{'(writeback)' if c.writeback else ''}" for c in lay.crtcs)
        encs = ", ".join(f"{e.name}->{','.join(e.possible_crtcs)}" for e in lay.encoders)
        print(f"  planes: {planes}\n  crtcs: {crtcs}\n  encoders: {encs}", file=out)
        if m.card is not None:
            lit = ", ".join(f"{c.name} {'lit' if c.lit else 'dark'}" for c in m.connectors if c.lit is not None)
            print(f"  DRM master: {m.master.describe() if m.master else 'none'}; {lit}", file=out)
        if m.note:
            print(f"  note: {m.note}", file=out)


def _cmd_up(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from vkmsremote.service.up import check_options, serve_up
    from vkmsremote.vkms.device import preview_up, up
    from vkmsremote.vkms.profile import load_profile

    check_options(args)
    if args.vm:
        from vkmsremote.service.vm import run_up_in_vm

        return run_up_in_vm(args, command_arguments(argv))
    spec = load_profile(args.profile)
    cfs = _configfs(args)
    if args.dry_run:
        sys.stdout.write(preview_up(spec, configfs=cfs, replace=args.replace))
        return 0
    result = up(spec, configfs=cfs, state=_state(args, cfs), replace=args.replace, timeout=args.timeout,
                default_device=args.default_device)
    if args.json:
        print(json.dumps({"changed": result.changed, "device": result.device.to_json()}, indent=2))
    else:
        what = f"made {spec.name} ({len(result.applied)} configfs operations)" if result.changed \
            else f"using {result.device.name}: {result.device.note}" if result.device.configfs_path == "-" \
            else f"{spec.name} already up: nothing changed"
        print(what)
        _print_mapping(result.device, sys.stdout)
    if args.no_serve:
        return 0
    if not cfs.is_system:  # a stand-in directory (tests): no kernel behind it, nothing to serve
        print(f"not serving: {cfs.root} is not the kernel's configfs", file=sys.stderr)
        return 0
    return serve_up(args, result.device, out=sys.stderr if args.json else sys.stdout)


def _cmd_down(args: argparse.Namespace) -> int:
    from vkmsremote.vkms.device import down, plan_down
    from vkmsremote.vkms.plan import as_shell

    cfs = _configfs(args)
    store = _state(args, cfs)
    if args.dry_run:
        for name, ops in plan_down(args.device, configfs=cfs, state=store, force=args.force):
            sys.stdout.write(as_shell(ops) if ops else f"# {name}: nothing left to remove\n")
        return 0
    results = down(args.device, configfs=cfs, state=store, force=args.force)
    if not results:
        print("nothing to remove: no device made by vkmsremote up is recorded")
    for r in results:
        print(f"removed {r.device} ({len(r.applied)} configfs operations)" if r.applied
              else f"{r.device}: nothing left to remove")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from vkmsremote.vkms.device import status

    cfs = _configfs(args)
    devices = status(args.device, configfs=cfs, state=_state(args, cfs))
    from vkmsremote.rfb.encodings import h264

    web = _web_client()
    sockets = _consumer_sockets(devices)
    rsa_key = _rsa_key_status()
    from vkmsremote.input.clipboard import open_desktop_clipboard
    from vkmsremote.input.layout import describe_desktop_layout

    desktop_input = {"keyboard_layout": describe_desktop_layout(), "clipboard": open_desktop_clipboard()[1]}
    if args.json:
        print(json.dumps({"configfs": str(cfs.vkms), "devices": [d.to_json() for d in devices], "web_client": web,
                          "open_h264": {"offered": h264.available(), "why_not": h264.unavailable_reason(),
                                        "hardware_encoders": h264.hardware_encoders()},
                          "rsa_aes_key": rsa_key, "consumer_sockets": sockets, "desktop_input": desktop_input},
                         indent=2))
    else:
        _print_status(devices, sys.stdout)
        for name, path in sockets.items():
            print(f"consumer socket: {name} -> {path}")
        print(f"server: {h264.describe()}")
        if web is None:
            print("web client (--web): none installed; run scripts/install-novnc.sh")
        else:
            lacks = f"; lacks {', '.join(web['lacks'])}" if web["lacks"] else ""
            print(f"web client (--web): noVNC {web['version']} from {web['root']}{lacks}")
        if rsa_key is not None:
            print(f"RSA-AES key fingerprint {rsa_key['fingerprint']} ({rsa_key['path']})")
        print(f"keyboard layout: {desktop_input['keyboard_layout']}")
        print(desktop_input["clipboard"])
    return 0


def _consumer_sockets(devices: list[Any]) -> dict[str, str]:
    """Connector name -> its consumer socket, for those ``up`` serves now (docs/consumer-protocol.md)."""
    from vkmsremote.consumer.options import default_socket_path

    paths = {c.name: default_socket_path(c.name) for d in devices for c in d.connectors}
    return {name: str(path) for name, path in paths.items() if path.is_socket()}


def _cmd_consume(args: argparse.Namespace) -> int:
    from vkmsremote.consumer.consume import run

    return run(args)


def _web_client() -> dict[str, Any] | None:
    """The noVNC `--web` would serve (version, folder, what it lacks), or None if none is installed."""
    from vkmsremote.errors import UsageError
    from vkmsremote.web.novnc import find_bundle

    try:
        bundle = find_bundle()
    except UsageError:
        return None
    return {"version": bundle.version, "kind": bundle.kind, "root": str(bundle.root), "lacks": list(bundle.lacks)}


def _rsa_key_status() -> dict[str, str] | None:
    """The server's RSA-AES key as viewers show it, if one was made (serving makes it; status does not)."""
    from vkmsremote.server.rsakey import default_rsa_key_path, ensure_rsa_key

    path = default_rsa_key_path()
    try:
        if not path.exists():
            return None
        return {"path": str(path), "fingerprint": ensure_rsa_key(path).fingerprint}
    except PermissionError:
        return None  # another user's key (status needs no root; serving as root made it)
    except (UsageError, OSError) as e:
        return {"path": str(path), "fingerprint": f"unusable: {e}"}


def _cmd_hotplug(args: argparse.Namespace) -> int:
    from vkmsremote.vkms.device import hotplug

    cfs = _configfs(args)
    c = hotplug(args.connector, args.connect, device=args.device, configfs=cfs, state=_state(args, cfs),
                timeout=args.timeout)
    if args.json:
        print(json.dumps(c.to_json(), indent=2))
    else:
        drm = f" ({c.drm_name} id {c.connector_id}: DRM reports {c.drm_status})" if c.connector_id else ""
        print(f"{c.name} {c.configfs_status}{drm}")
    return 0


def _cmd_output(args: argparse.Namespace) -> int:
    from vkmsremote.vkms.output import output_add, output_remove

    cfs = _configfs(args)
    common = {"device": args.device, "configfs": cfs, "state": _state(args, cfs), "timeout": args.timeout}
    change = (output_add(args.connector, mode=args.mode, **common) if args.output_action == "add"
              else output_remove(args.connector, **common))
    if args.json:
        print(json.dumps(change.to_json(), indent=2))
    else:
        c = change.connector
        lit = {True: "lit", False: "dark", None: "lit state unknown"}[change.lit]
        print(f"{c.name} {c.configfs_status} ({c.drm_name}: DRM reports {c.drm_status}, {lit} after "
              f"{change.seconds:.1f} s); compositor: {change.compositor}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from vkmsremote.service.serve import run

    return run(args)


COMMANDS = {"consume": _cmd_consume, "down": _cmd_down, "status": _cmd_status, "hotplug": _cmd_hotplug,
            "output": _cmd_output, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        # The global options are the environment variables' equivalents (serve reads them too).
        if args.configfs_root:
            os.environ["VKMSREMOTE_CONFIGFS_ROOT"] = args.configfs_root
        if args.state_dir:
            os.environ["VKMSREMOTE_STATE_DIR"] = args.state_dir
        if args.command == "up":
            return _cmd_up(args, argv)  # up --vm passes the user's own arguments on to the guest
        return COMMANDS[args.command](args)
    except (VkmsRemoteError, KeyboardInterrupt) as exc:
        message = str(exc) if isinstance(exc, VkmsRemoteError) else "interrupted"
        print("vkmsremote: " + " ".join(message.split()), file=sys.stderr)
        return exit_code(exc)
