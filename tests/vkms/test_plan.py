"""The pure planner, apply/rollback against a fake configfs directory, and the configfs <-> DRM match.

The fake (tests/fake_configfs.py: FakeConfigfs on an ordinary directory) emulates the kernel's default groups, EBUSY while enabled
and EINVAL on enabling an invalid device; the real kernel is exercised by tests/vm/test_lifecycle_vm.py.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from fake_configfs import FakeConfigfs

from vkmsremote.errors import DeviceStateError, VkmsRemoteError, VkmsUnavailableError
from vkmsremote.vkms.apply import Journal, apply, rollback
from vkmsremote.vkms.configfs import Configfs
from vkmsremote.vkms.device import down, hotplug, plan_down, up
from vkmsremote.vkms.mapping import (
    DRM_MODE_CONNECTOR_VIRTUAL,
    DRM_MODE_CONNECTOR_WRITEBACK,
    DrmConnector,
    DrmView,
    match,
)
from vkmsremote.vkms.plan import (
    Mkdir,
    ObservedDevice,
    Op,
    Rmdir,
    Symlink,
    Unlink,
    WriteAttr,
    as_shell,
    plan_create,
    plan_teardown,
    plan_up,
)
from vkmsremote.vkms.profile import load_profile
from vkmsremote.vkms.spec import ConnectorStatus, DeviceSpec
from vkmsremote.vkms.state import Record, StateStore

VKMS = PurePosixPath("/sys/kernel/config/vkms")
XR0 = load_profile("xr-0")
DUAL = load_profile("xr-dual")

XR0_SHELL = """\
mkdir /sys/kernel/config/vkms/vkmsremote
mkdir /sys/kernel/config/vkms/vkmsremote/planes/primary
echo 1 > /sys/kernel/config/vkms/vkmsremote/planes/primary/type
mkdir /sys/kernel/config/vkms/vkmsremote/planes/cursor
echo 2 > /sys/kernel/config/vkms/vkmsremote/planes/cursor/type
mkdir /sys/kernel/config/vkms/vkmsremote/crtcs/crtc0
echo 1 > /sys/kernel/config/vkms/vkmsremote/crtcs/crtc0/writeback
mkdir /sys/kernel/config/vkms/vkmsremote/encoders/enc0
mkdir /sys/kernel/config/vkms/vkmsremote/connectors/XR-0
echo 1 > /sys/kernel/config/vkms/vkmsremote/connectors/XR-0/status
ln -s /sys/kernel/config/vkms/vkmsremote/crtcs/crtc0 /sys/kernel/config/vkms/vkmsremote/planes/primary/possible_crtcs/crtc0
ln -s /sys/kernel/config/vkms/vkmsremote/crtcs/crtc0 /sys/kernel/config/vkms/vkmsremote/planes/cursor/possible_crtcs/crtc0
ln -s /sys/kernel/config/vkms/vkmsremote/crtcs/crtc0 /sys/kernel/config/vkms/vkmsremote/encoders/enc0/possible_crtcs/crtc0
ln -s /sys/kernel/config/vkms/vkmsremote/encoders/enc0 /sys/kernel/config/vkms/vkmsremote/connectors/XR-0/possible_encoders/enc0
echo 1 > /sys/kernel/config/vkms/vkmsremote/enabled && test "$(cat /sys/kernel/config/vkms/vkmsremote/enabled)" = 1
"""


def observed_of(spec: DeviceSpec, *, enabled: bool = True) -> ObservedDevice:
    return ObservedDevice(spec.name, enabled, spec.layout)


# --- the pure planner ------------------------------------------------------------------------------------


def test_create_plan_as_shell_is_exactly_the_kernel_recipe() -> None:
    assert as_shell(plan_create(XR0, VKMS)) == XR0_SHELL


def test_create_plan_orders_targets_before_links_and_enables_last() -> None:
    ops = plan_create(DUAL, VKMS)
    made: set[PurePosixPath] = set()
    for i, op in enumerate(ops):
        if isinstance(op, Mkdir):
            assert op.path.parent.parent in made or op.path.parent == VKMS
            made.add(op.path)
        elif isinstance(op, Symlink):
            assert op.target in made and op.link.parent.parent in made
        elif isinstance(op, WriteAttr) and op.path.name != "enabled":
            assert op.path.parent in made
        else:
            assert op == WriteAttr(VKMS / "vkmsremote" / "enabled", "1", verify=True) and i == len(ops) - 1


def test_up_plan_is_empty_when_configfs_already_holds_the_profile() -> None:
    assert plan_up(XR0, observed_of(XR0), VKMS) == []


def test_up_plan_ignores_creation_and_link_order() -> None:
    lay = DUAL.layout
    shuffled = type(lay)(lay.planes[::-1], lay.crtcs[::-1], lay.encoders[::-1], lay.connectors[::-1])
    assert plan_up(DUAL, ObservedDevice(DUAL.name, True, shuffled), VKMS) == []


def test_up_plan_only_enables_a_matching_disabled_device() -> None:
    assert plan_up(XR0, observed_of(XR0, enabled=False), VKMS) == [
        WriteAttr(VKMS / "vkmsremote" / "enabled", "1", verify=True)
    ]


def test_up_plan_writes_back_a_hotplugged_status_without_touching_the_rest() -> None:
    k = XR0.connectors[0]
    unplugged = type(k)(k.name, k.possible_encoders, ConnectorStatus.DISCONNECTED)
    lay = XR0.layout
    observed = ObservedDevice(XR0.name, True, type(lay)(lay.planes, lay.crtcs, lay.encoders, (unplugged,)))
    assert plan_up(XR0, observed, VKMS) == [WriteAttr(VKMS / "vkmsremote/connectors/XR-0/status", "1")]


def test_up_plan_refuses_a_different_layout_naming_the_differences() -> None:
    with pytest.raises(DeviceStateError) as info:
        plan_up(XR0, observed_of(DUAL), VKMS)
    msg = str(info.value)
    assert "already exists with a different layout" in msg
    assert "connectors/XR-1 not in the profile" in str(XR0.layout.differences(DUAL.layout))
    assert "--replace" in msg


def test_up_plan_with_replace_tears_down_then_creates() -> None:
    ops = plan_up(XR0, observed_of(DUAL), VKMS, replace=True)
    teardown = plan_teardown(observed_of(DUAL), VKMS)
    assert ops == teardown + plan_create(XR0, VKMS)


def test_teardown_is_disable_unlink_rmdir_items_rmdir_device() -> None:
    ops = plan_teardown(observed_of(DUAL), VKMS)
    kinds = [type(op) for op in ops]
    assert ops[0] == WriteAttr(VKMS / "vkmsremote" / "enabled", "0", verify=True)
    assert ops[-1] == Rmdir(VKMS / "vkmsremote")
    first_rmdir = kinds.index(Rmdir)
    assert set(kinds[1:first_rmdir]) == {Unlink} and set(kinds[first_rmdir:]) == {Rmdir}
    assert kinds.count(Unlink) == 4 + 2 + 2  # plane, encoder and connector links
    groups = [op.path.parent.name for op in ops[first_rmdir:-1] if isinstance(op, Rmdir)]
    assert groups == ["connectors"] * 2 + ["encoders"] * 2 + ["crtcs"] * 2 + ["planes"] * 4


def test_teardown_of_a_disabled_device_does_not_write_enabled() -> None:
    ops = plan_teardown(observed_of(XR0, enabled=False), VKMS)
    assert not any(isinstance(op, WriteAttr) for op in ops)


def test_teardown_only_touches_recorded_paths() -> None:
    root = VKMS / "vkmsremote"
    only = [root / "enabled", root / "connectors/XR-0/possible_encoders/enc0"]
    ops = plan_teardown(observed_of(XR0), VKMS, only=only)
    assert ops == [WriteAttr(root / "enabled", "0", verify=True), Unlink(only[1])]


def test_shell_rendering_quotes_paths() -> None:
    assert Mkdir(PurePosixPath("/x/a b")).shell() == "mkdir '/x/a b'"


# --- apply and rollback on the fake configfs -----------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Configfs:
    (tmp_path / "vkms").mkdir()
    return FakeConfigfs(tmp_path)


def snapshot(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            out.append(f"{p.relative_to(root)}{' -> ' + os.readlink(p) if p.is_symlink() else ''}")
    return sorted(out)


def test_apply_builds_what_observe_reads_back(fake: Configfs) -> None:
    apply(plan_create(DUAL, PurePosixPath(fake.vkms)), fake)
    observed = fake.observe("vkmsremote")
    assert observed is not None and observed.enabled
    assert DUAL.layout.differences(observed.layout) == []


def test_fake_refuses_changes_while_enabled_and_invalid_enables(fake: Configfs) -> None:
    v = PurePosixPath(fake.vkms)
    apply(plan_create(XR0, v), fake)
    with pytest.raises(DeviceStateError, match="busy"):
        fake.run(Mkdir(v / "vkmsremote/planes/overlay"))
    fake.run(WriteAttr(v / "vkmsremote/connectors/XR-0/status", "2"))  # status stays writable
    ops = plan_create(XR0, v)
    invalid = [op for op in ops if not (isinstance(op, Symlink) and op.link.parent.name == "possible_encoders")]
    apply(plan_teardown(fake.observe("vkmsremote"), v), fake)  # type: ignore[arg-type]
    with pytest.raises(DeviceStateError, match="refused"):
        apply(invalid, fake)


class FailAt:
    """Runs operations on the fake, failing once (like the kernel would) at the ``n``-th."""

    def __init__(self, cfs: Configfs, n: int) -> None:
        self.cfs, self.n, self.count = cfs, n, 0

    def run(self, op: Op) -> None:
        self.count += 1
        if self.count == self.n + 1:
            raise DeviceStateError(f"injected failure at operation {self.n}: {op.shell()}")
        self.cfs.run(op)


def test_rollback_after_a_failure_at_every_step_leaves_nothing(fake: Configfs) -> None:
    before = snapshot(fake.root)
    ops = plan_create(DUAL, PurePosixPath(fake.vkms))
    for n in range(len(ops)):
        journal = Journal()
        with pytest.raises(DeviceStateError, match="injected"):
            apply(ops, FailAt(fake, n), journal)
        assert len(journal.done) == n
        assert rollback(journal, fake) == []
        assert snapshot(fake.root) == before, f"left behind after failing at operation {n}"


def test_up_twice_is_a_no_op_and_down_removes_everything(fake: Configfs, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    first = up(XR0, configfs=fake, state=store)
    assert first.changed and first.device.enabled and first.device.managed
    after_first = snapshot(fake.root)
    second = up(XR0, configfs=fake, state=store)
    assert not second.changed and second.applied == ()
    assert snapshot(fake.root) == after_first
    assert [c.name for c in second.device.connectors] == ["XR-0"]
    (result,) = down(configfs=fake, state=store)
    assert result.device == "vkmsremote" and len(result.applied) == 1 + 4 + 5 + 1
    assert list(fake.vkms.iterdir()) == [] and store.devices() == []


def test_up_records_the_device_before_enabling_it(fake: Configfs, tmp_path: Path) -> None:
    """The state record is written before the first configfs change and already names the device and its
    ``enabled``: a kill after enabling, before the finished record, leaves a device down and up can adopt
    (tests/vm/test_faults_vm.py kills up at every such point)."""
    store = StateStore(tmp_path / "state")
    events: list[object] = []
    real_run, real_save = fake.run, store.save
    fake.run = lambda op: (events.append(op), real_run(op))[1]  # type: ignore[method-assign]
    store.save = lambda record: (events.append(record), real_save(record))[1]  # type: ignore[method-assign]
    up(XR0, configfs=fake, state=store)
    enable = next(i for i, e in enumerate(events) if isinstance(e, WriteAttr) and e.path.name == "enabled")
    first, last = events[0], events[-1]
    assert isinstance(first, Record) and first.in_progress
    device = PurePosixPath(fake.vkms / "vkmsremote")
    assert device in first.created and device / "enabled" in first.created
    assert isinstance(last, Record) and not last.in_progress and last.created == first.created
    assert enable < len(events) - 1  # the finished record comes after enabling: the window the first one covers


def test_failed_up_rolls_back_and_keeps_no_record(fake: Configfs, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    for n in (0, 5, 14):
        with pytest.raises(DeviceStateError, match="injected"):
            up(DUAL, configfs=fake, state=store, executor=FailAt(fake, n))
        assert list(fake.vkms.iterdir()) == [] and store.devices() == []


def test_failure_in_the_step_after_up_rolls_the_device_back(fake: Configfs, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")

    def serve_fails(mapping: object) -> None:
        raise VkmsRemoteError("the server could not start")

    with pytest.raises(VkmsRemoteError, match="server"):
        up(XR0, configfs=fake, state=store, after_apply=serve_fails)
    assert list(fake.vkms.iterdir()) == [] and store.devices() == []


def test_up_refuses_a_different_layout_and_changes_nothing(fake: Configfs, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    up(DUAL, configfs=fake, state=store)
    before = snapshot(fake.root)
    with pytest.raises(DeviceStateError, match="different layout"):
        up(XR0, configfs=fake, state=store)
    assert snapshot(fake.root) == before
    replaced = up(XR0, configfs=fake, state=store, replace=True)
    assert [c.name for c in replaced.device.connectors] == ["XR-0"]
    down(configfs=fake, state=store)
    assert list(fake.vkms.iterdir()) == []


def test_failed_replace_puts_the_old_device_back(fake: Configfs, tmp_path: Path) -> None:
    """up --replace that fails anywhere (tearing the old device down, building the new one, enabling it,
    or in the step after up) leaves the old device as it was, with its record, as a failed up must."""
    store = StateStore(tmp_path / "state")
    up(DUAL, configfs=fake, state=store)
    fake.run(WriteAttr(PurePosixPath(fake.vkms) / "vkmsremote" / "connectors" / "XR-1" / "status", "2"))  # unplugged
    before, observed, record = snapshot(fake.root), fake.observe("vkmsremote"), store.load("vkmsremote")
    total = len(plan_up(XR0, observed, PurePosixPath(fake.vkms), replace=True))
    for n in (0, 1, 7, 12, total - 1):
        with pytest.raises(DeviceStateError, match="injected"):
            up(XR0, configfs=fake, state=store, replace=True, executor=FailAt(fake, n))
        assert snapshot(fake.root) == before, f"old device not restored after a failure at operation {n}"
        assert fake.observe("vkmsremote") == observed and store.load("vkmsremote") == record

    def serve_fails(mapping: object) -> None:
        raise VkmsRemoteError("the server could not start")

    with pytest.raises(VkmsRemoteError, match="server"):
        up(XR0, configfs=fake, state=store, replace=True, after_apply=serve_fails)
    assert fake.observe("vkmsremote") == observed and store.load("vkmsremote") == record


def test_down_leaves_devices_it_did_not_make_unless_forced(fake: Configfs, tmp_path: Path) -> None:
    apply(plan_create(XR0, PurePosixPath(fake.vkms)), fake)  # made "by hand"
    store = StateStore(tmp_path / "state")
    assert down(configfs=fake, state=store) == []
    with pytest.raises(DeviceStateError, match="not made by vkmsremote up"):
        down("vkmsremote", configfs=fake, state=store)
    assert plan_down(force=True, configfs=fake, state=store)[0][1][0].shell().startswith("echo 0 >")
    down("vkmsremote", configfs=fake, state=store, force=True)
    assert list(fake.vkms.iterdir()) == []


def test_hotplug_writes_status_and_unknown_connector_is_a_usage_error(fake: Configfs, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    up(XR0, configfs=fake, state=store)
    c = hotplug("XR-0", False, configfs=fake, state=store)
    assert c.configfs_status == "disconnected"
    assert (fake.vkms / "vkmsremote/connectors/XR-0/status").read_text().strip() == "2"
    with pytest.raises(VkmsRemoteError, match=r"no connector named 'XR-7'.*known connectors: XR-0 \(vkmsremote\)"):
        hotplug("XR-7", True, configfs=fake, state=store)
    assert up(XR0, configfs=fake, state=store).changed  # up restores the profile's status
    assert (fake.vkms / "vkmsremote/connectors/XR-0/status").read_text().strip() == "1"


def test_no_vkms_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(VkmsUnavailableError, match="modprobe vkms"):
        up(XR0, configfs=Configfs(tmp_path), state=StateStore(tmp_path / "s"))


# --- matching configfs objects with DRM objects ----------------------------------------------------------------


def dual_view(*, swap_encoders: bool = False) -> DrmView:
    # xr-dual on a fresh card: CRTCs 40, 41; writeback encoders 50, 51 (made with the CRTCs, before
    # the configfs encoders 52, 53); writeback connectors 60, 61; Virtual connectors 62, 63.
    enc = {50: 0b01, 51: 0b10, 52: 0b01, 53: 0b10}
    conns = (
        DrmConnector(60, "Writeback-1", DRM_MODE_CONNECTOR_WRITEBACK, "unknown", (50,), ()),
        DrmConnector(61, "Writeback-2", DRM_MODE_CONNECTOR_WRITEBACK, "unknown", (51,), ()),
        DrmConnector(63, "Virtual-4", DRM_MODE_CONNECTOR_VIRTUAL, "connected", (53,) if not swap_encoders else (52,),
                     ("1024x768@60.00",), "1024x768@60.00"),
        DrmConnector(62, "Virtual-3", DRM_MODE_CONNECTOR_VIRTUAL, "connected", (52,) if not swap_encoders else (53,),
                     ("1024x768@60.00",), "1024x768@60.00"),
    )
    return DrmView(conns, (40, 41), enc, frozenset({50, 51}))


def test_match_pairs_connectors_in_creation_order_with_their_crtcs() -> None:
    m = {x.name: x for x in match(DUAL.layout, dual_view())}
    assert (m["XR-0"].drm.name, m["XR-0"].drm.id, m["XR-0"].crtc_ids, m["XR-0"].encoder_ids) == (
        "Virtual-3", 62, (40,), (52,))
    assert (m["XR-1"].drm.name, m["XR-1"].drm.id, m["XR-1"].crtc_ids) == ("Virtual-4", 63, (41,))


def test_match_refuses_when_links_disagree() -> None:
    with pytest.raises(DeviceStateError, match="connector XR-0 paired with Virtual-3"):
        match(DUAL.layout, dual_view(swap_encoders=True))
    with pytest.raises(DeviceStateError, match="1 connector"):
        match(XR0.layout, dual_view())
