"""The update-flow rules (vkmsremote.rfb.flow) without sockets or asyncio: pending requests and their
coalescing, incremental vs full, continuous updates and EndOfContinuousUpdates, fences (Request,
BlockBefore, BlockAfter, SyncNext) and what waits for the update being built, no-data updates (size
changes, layout replies), pseudo-rectangles, the transition table, out-of-order and abusive client input,
and a hypothesis property over random message/update interleavings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.flow import (
    TRANSITIONS,
    LayoutReply,
    LayoutUpdate,
    Phase,
    PixelUpdate,
    SizeChange,
    Step,
    UpdateFlow,
)
from vkmsremote.rfb.messages import (
    BGR233,
    ClientFence,
    EnableContinuousUpdates,
    EndOfContinuousUpdates,
    ExtendedDesktopSizeReason,
    ExtendedDesktopSizeStatus,
    FenceFlag,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    Screen,
    ServerFence,
    SetDesktopSize,
    SetEncodings,
    SetPixelFormat,
)
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

W, H = 64, 48
RGB565 = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
COLOUR_MAP = PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0)
REQ, BB, BA, SN = FenceFlag.REQUEST, FenceFlag.BLOCK_BEFORE, FenceFlag.BLOCK_AFTER, FenceFlag.SYNC_NEXT


def full(incremental: bool = False) -> FramebufferUpdateRequest:
    return FramebufferUpdateRequest(incremental, 0, 0, W, H)


def fresh(*encodings: int, sent_first: bool = True, **kwargs: bool) -> UpdateFlow:
    """A flow whose client announced ``encodings``; with ``sent_first`` the initial full update is already out."""
    flow = UpdateFlow(W, H, **kwargs)
    flow.receive(SetEncodings((Encoding.RAW, *encodings)))
    if sent_first:
        flow.receive(full())
        plan = flow.begin_update(W, H)
        if isinstance(plan, LayoutUpdate):  # ExtendedDesktopSize clients get the layout first
            flow.update_done()
            flow.receive(full(True))
            plan = flow.begin_update(W, H)
        assert isinstance(plan, PixelUpdate)
        flow.update_done()
    return flow


def cycle(flow: UpdateFlow, width: int = W, height: int = H) -> object:
    """One begin_update/update_done round; the plan (or None)."""
    plan = flow.begin_update(width, height)
    if plan is not None:
        assert flow.phase is Phase.BUILDING
        flow.update_done()
    assert flow.phase is Phase.IDLE
    return plan


def covered(plan: object) -> set[tuple[int, int]]:
    """The 16x16 tiles (column, row) a pixel update covers."""
    assert isinstance(plan, PixelUpdate)
    return {(x // 16, y // 16) for r in plan.rects for x in range(r.x, r.x + r.w, 16)
            for y in range(r.y, r.y + r.h, 16)}


# --- requests --------------------------------------------------------------------------------------------


def test_no_update_without_a_request() -> None:
    flow = UpdateFlow(W, H)
    flow.receive(SetEncodings((Encoding.RAW,)))
    assert not flow.wants_pixels
    assert flow.begin_update(W, H) is None  # the whole screen is damaged, but nobody asked
    flow.receive(full())
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.rects == (Rect(0, 0, W, H),) and plan.pixel_format == NATIVE
    assert not flow.wants_pixels and cycle(flow) is None  # the request was answered


def test_incremental_request_stays_pending_until_something_changes() -> None:
    flow = fresh()
    flow.receive(full(True))
    assert cycle(flow) is None and flow.wants_pixels  # nothing changed: still pending
    flow.frame(W, H, (Rect(20, 10, 10, 4),))
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.rects == (Rect(16, 0, 16, 16),)
    assert not flow.wants_pixels


def test_requests_coalesce_into_one_update_of_their_union() -> None:
    flow = fresh()
    flow.receive(FramebufferUpdateRequest(True, 0, 0, 16, 16))
    flow.receive(FramebufferUpdateRequest(True, 32, 32, 16, 16))
    flow.frame(W, H, None)  # everything changed
    plan = cycle(flow)
    assert covered(plan) == {(c, r) for c in range(3) for r in range(3)}  # the union's bounding box
    assert cycle(flow) is None  # one update for both requests
    flow.receive(full(True))
    assert len(covered(cycle(flow))) == 4 * 3 - 9  # the rest of the damage was kept


def test_non_incremental_request_resends_its_area() -> None:
    flow = fresh()
    flow.receive(FramebufferUpdateRequest(False, 16, 16, 16, 16))
    assert covered(cycle(flow)) == {(1, 1)}  # no change, but the client lost that area


def test_a_request_received_while_building_is_answered_by_the_next_update() -> None:
    flow = fresh()
    flow.receive(full(True))
    flow.frame(W, H, (Rect(0, 0, 4, 4),))
    assert isinstance(flow.begin_update(W, H), PixelUpdate)
    flow.receive(full(True))  # arrives while the update is encoded
    flow.frame(W, H, (Rect(40, 40, 4, 4),))
    flow.update_done()
    assert covered(cycle(flow)) == {(2, 2)}  # not swallowed by the update that was being built


def test_requests_outside_the_framebuffer_are_clipped_or_empty() -> None:
    flow = fresh()
    flow.receive(FramebufferUpdateRequest(False, 60000, 60000, 65535, 65535))  # entirely outside
    assert cycle(flow) is None  # nothing to send, nothing damaged, no crash
    flow.receive(FramebufferUpdateRequest(False, 48, 32, 65535, 65535))  # overhangs the corner
    assert covered(cycle(flow)) == {(3, 2)}


# --- continuous updates --------------------------------------------------------------------------------------


def test_continuous_updates_announced_once_and_refused_before_announcement() -> None:
    flow = fresh()
    with pytest.raises(RemoteProtocolError, match="before the server announced"):
        flow.receive(EnableContinuousUpdates(True, 0, 0, W, H))
    flow = fresh(sent_first=False)
    assert flow.receive(SetEncodings((Encoding.CONTINUOUS_UPDATES,))) == [EndOfContinuousUpdates()]
    assert flow.receive(SetEncodings((Encoding.RAW, Encoding.CONTINUOUS_UPDATES))) == []  # only the first time


def test_continuous_updates_flow_without_requests_and_ignore_incremental_ones() -> None:
    flow = fresh(Encoding.CONTINUOUS_UPDATES)
    assert flow.receive(EnableContinuousUpdates(True, 0, 0, 32, 32)) == []
    assert flow.continuous_updates and flow.wants_pixels
    flow.frame(W, H, (Rect(0, 0, 4, 4), Rect(40, 40, 4, 4)))
    assert covered(cycle(flow)) == {(0, 0)}  # only the continuous area, unrequested
    flow.frame(W, H, (Rect(0, 0, 4, 4),))
    assert covered(cycle(flow)) == {(0, 0)}  # and again
    flow.receive(FramebufferUpdateRequest(True, 32, 32, 32, 16))  # incremental: ignored
    assert cycle(flow) is None
    flow.receive(FramebufferUpdateRequest(False, 48, 32, 16, 16))  # non-incremental: honoured outside the area
    assert covered(cycle(flow)) == {(3, 2)}


def test_disabling_continuous_updates_answers_end_of_continuous_updates_after_the_update_in_progress() -> None:
    flow = fresh(Encoding.CONTINUOUS_UPDATES)
    assert flow.receive(EnableContinuousUpdates(False, 0, 0, 0, 0)) == [EndOfContinuousUpdates()]  # even if off
    flow.receive(EnableContinuousUpdates(True, 0, 0, W, H))
    flow.frame(W, H, None)
    assert isinstance(flow.begin_update(W, H), PixelUpdate)
    assert flow.receive(EnableContinuousUpdates(False, 0, 0, W, H)) == []  # waits for the update being built
    assert flow.paused and flow.held and not flow.continuous_updates
    with pytest.raises(LocalProtocolError, match="while replies were waiting"):
        flow.receive(KeyEvent(True, 0x61))  # the session must not feed messages while paused
    assert flow.update_done() == [EndOfContinuousUpdates()]
    assert not flow.paused
    flow.frame(W, H, None)
    assert cycle(flow) is None  # off: nothing without a request


def test_continuous_area_replaced_and_empty_area_still_means_on() -> None:
    flow = fresh(Encoding.CONTINUOUS_UPDATES)
    flow.receive(EnableContinuousUpdates(True, 0, 0, 16, 16))
    flow.receive(EnableContinuousUpdates(True, 48, 32, 16, 16))  # replaces, not adds
    flow.frame(W, H, None)
    assert covered(cycle(flow)) == {(3, 2)}
    flow.receive(EnableContinuousUpdates(True, 60000, 60000, 10, 10))  # outside: on, but covering nothing
    flow.receive(full(True))  # ignored while on
    assert flow.continuous_updates and cycle(flow) is None


# --- fences ---------------------------------------------------------------------------------------------------


def test_fence_announced_once_and_its_response_accepted_once() -> None:
    flow = UpdateFlow(W, H)
    assert flow.receive(SetEncodings((Encoding.FENCE,))) == [ServerFence(REQ)]
    assert flow.receive(SetEncodings((Encoding.FENCE, Encoding.RAW))) == []
    assert flow.receive(ClientFence(0, b"")) == []  # the answer to our request
    with pytest.raises(RemoteProtocolError, match="to no ServerFence request"):
        flow.receive(ClientFence(BB, b""))  # a second answer: we asked once


def test_fence_response_without_any_request_is_the_clients_fault() -> None:
    with pytest.raises(RemoteProtocolError):
        UpdateFlow(W, H).receive(ClientFence(SN, b"x"))


@pytest.mark.parametrize("flags", [REQ, REQ | BA, REQ | BB, REQ | SN, REQ | BB | BA | SN])
def test_fence_reply_echoes_known_flags_and_payload_at_once_when_idle(flags: int) -> None:
    flow = fresh(Encoding.FENCE)
    unknown = 1 << 5 | 1 << 30
    assert flow.receive(ClientFence(flags | unknown, b"p" * 64)) == [ServerFence(flags & ~REQ, b"p" * 64)]


def test_block_before_reply_waits_for_the_update_being_built() -> None:
    flow = fresh(Encoding.FENCE)
    flow.receive(full())
    assert isinstance(flow.begin_update(W, H), PixelUpdate)
    assert flow.receive(ClientFence(REQ | BB, b"1")) == []
    assert flow.paused
    assert flow.update_done() == [ServerFence(BB, b"1")]  # written right after that update
    assert not flow.held  # BlockBefore holds nothing afterwards


def test_block_after_alone_is_answered_at_once_even_while_building() -> None:
    flow = fresh(Encoding.FENCE)
    flow.receive(full())
    flow.begin_update(W, H)
    assert flow.receive(ClientFence(REQ | BA, b"2")) == [ServerFence(BA, b"2")]  # messages are handled in order
    assert not flow.paused
    assert flow.update_done() == []


def test_sync_next_holds_updates_until_the_next_message_is_in() -> None:
    flow = fresh(Encoding.FENCE)
    flow.receive(full())  # a request is pending
    assert flow.receive(ClientFence(REQ | SN, b"3")) == [ServerFence(SN, b"3")]
    assert flow.held and not flow.paused
    assert flow.begin_update(W, H) is None  # nothing may start before the next message
    flow.receive(SetPixelFormat(RGB565))  # the message made atomic
    assert not flow.held
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.pixel_format == RGB565  # everything after the reply has it


def test_sync_next_while_building_old_format_before_reply_new_format_after() -> None:
    flow = fresh(Encoding.FENCE, Encoding.CONTINUOUS_UPDATES)
    flow.receive(EnableContinuousUpdates(True, 0, 0, W, H))
    flow.frame(W, H, None)
    building = flow.begin_update(W, H)
    assert isinstance(building, PixelUpdate) and building.pixel_format == NATIVE
    assert flow.receive(ClientFence(REQ | SN, b"4")) == []  # after the update in the old format
    assert flow.update_done() == [ServerFence(SN, b"4")]
    flow.frame(W, H, None)
    assert flow.begin_update(W, H) is None  # held: the next message is not in yet
    flow.receive(SetPixelFormat(RGB565))
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.pixel_format == RGB565


def test_sync_next_followed_by_sync_next_keeps_holding() -> None:
    flow = fresh(Encoding.FENCE)
    flow.receive(ClientFence(REQ | SN, b"a"))
    flow.receive(ClientFence(REQ | SN, b"b"))  # the "next message" is itself a SyncNext fence
    assert flow.held
    flow.receive(PointerEvent(0, 1, 1))
    assert not flow.held


def test_a_fence_request_without_the_fence_encoding_is_still_answered() -> None:
    flow = fresh()
    assert flow.receive(ClientFence(REQ | BB, b"")) == [ServerFence(BB, b"")]


# --- no-data updates: layout and size changes ----------------------------------------------------------------------


def test_non_incremental_request_is_answered_with_the_layout_first() -> None:
    flow = fresh(Encoding.EXTENDED_DESKTOP_SIZE, sent_first=False)
    flow.receive(full())
    plan = cycle(flow)
    assert plan == LayoutUpdate((LayoutReply(ExtendedDesktopSizeReason.SERVER, ExtendedDesktopSizeStatus.OK),))
    assert cycle(flow) is None  # the layout update answered the request (TigerVNC)
    flow.receive(full(True))
    assert isinstance(cycle(flow), PixelUpdate)  # the damage of the full request was kept


def test_set_desktop_size_needs_extended_desktop_size() -> None:
    msg = SetDesktopSize(W, H, (Screen(1, 0, 0, W, H),))
    with pytest.raises(RemoteProtocolError, match="did not announce ExtendedDesktopSize"):
        fresh(Encoding.DESKTOP_SIZE).receive(msg)
    assert fresh(Encoding.EXTENDED_DESKTOP_SIZE).receive(msg) == []


def test_set_desktop_size_results() -> None:
    flow = fresh(Encoding.EXTENDED_DESKTOP_SIZE)
    screens = (Screen(1, 0, 0, W, H, 7),)
    same = SetDesktopSize(W, H, screens)
    flow.desktop_size_result(same, ExtendedDesktopSizeStatus.OK)  # layout only: echoed exactly
    flow.desktop_size_result(SetDesktopSize(10, 10, screens), ExtendedDesktopSizeStatus.PROHIBITED)
    assert cycle(flow) == LayoutUpdate((
        LayoutReply(ExtendedDesktopSizeReason.THIS_CLIENT, ExtendedDesktopSizeStatus.OK, screens),
        LayoutReply(ExtendedDesktopSizeReason.THIS_CLIENT, ExtendedDesktopSizeStatus.PROHIBITED, None),
    ))  # in order, without a request
    bigger = SetDesktopSize(2 * W, H, (Screen(1, 0, 0, 2 * W, H),))
    flow.desktop_size_result(bigger, ExtendedDesktopSizeStatus.OK)
    assert cycle(flow) is None  # the size change itself will answer
    flow.frame(2 * W, H, None, ExtendedDesktopSizeReason.THIS_CLIENT)
    assert cycle(flow, 2 * W, H) == SizeChange(2 * W, H, Encoding.EXTENDED_DESKTOP_SIZE,
                                               ExtendedDesktopSizeReason.THIS_CLIENT)


def test_size_change_goes_out_unrequested_and_resets_damage_and_areas() -> None:
    flow = fresh(Encoding.DESKTOP_SIZE, Encoding.CONTINUOUS_UPDATES)
    flow.receive(EnableContinuousUpdates(True, 32, 32, 32, 16))
    flow.receive(full(True))  # ignored (continuous updates on)
    flow.frame(32, 24, None, ExtendedDesktopSizeReason.OTHER_CLIENT)
    assert cycle(flow, 32, 24) == SizeChange(32, 24, Encoding.DESKTOP_SIZE, ExtendedDesktopSizeReason.OTHER_CLIENT)
    assert flow.size == (32, 24)
    plan = cycle(flow, 32, 24)  # the continuous area fell outside: it becomes the whole new framebuffer
    assert isinstance(plan, PixelUpdate) and plan.rects == (Rect(0, 0, 32, 24),)


def test_size_change_replaces_pending_server_layout_replies_but_keeps_this_clients() -> None:
    flow = fresh(Encoding.EXTENDED_DESKTOP_SIZE)
    flow.receive(full())  # a SERVER layout reply is due
    flow.desktop_size_result(SetDesktopSize(1, 1, (Screen(1, 0, 0, 1, 1),)), ExtendedDesktopSizeStatus.INVALID_LAYOUT)
    flow.frame(W, 2 * H, None)
    assert isinstance(cycle(flow, W, 2 * H), SizeChange)
    plan = cycle(flow, W, 2 * H)
    assert plan == LayoutUpdate((LayoutReply(ExtendedDesktopSizeReason.THIS_CLIENT,
                                             ExtendedDesktopSizeStatus.INVALID_LAYOUT),))


def test_size_change_to_a_client_without_desktop_size_is_our_error() -> None:
    flow = fresh()
    flow.frame(W + 16, H, None)
    with pytest.raises(LocalProtocolError, match="cannot follow a size change"):
        flow.begin_update(W + 16, H)
    assert flow.phase is Phase.IDLE


# --- pseudo-rectangles and pixel formats ------------------------------------------------------------------------------


def test_colour_map_client_gets_bgr233_and_the_map_once() -> None:
    flow = fresh()
    flow.receive(SetPixelFormat(COLOUR_MAP))
    flow.receive(full())
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.colour_map and plan.pixel_format == BGR233
    flow.receive(full())
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and not plan.colour_map


def test_pseudo_rectangles_are_sent_once_and_only_when_announced() -> None:
    flow = fresh(Encoding.QEMU_EXTENDED_KEY_EVENT, Encoding.CURSOR, Encoding.CURSOR_WITH_ALPHA, has_cursor=True)
    assert flow.cursor_encoding == Encoding.CURSOR
    flow.receive(full(True))
    flow.name_changed()  # not announced: ignored
    assert cycle(flow) is None
    flow = fresh(Encoding.QEMU_EXTENDED_KEY_EVENT, Encoding.CURSOR_WITH_ALPHA, Encoding.DESKTOP_NAME,
                 sent_first=False, has_cursor=True)
    flow.receive(full(True))
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.qemu_key_events and plan.cursor and not plan.desktop_name
    flow.receive(SetEncodings((Encoding.QEMU_EXTENDED_KEY_EVENT, Encoding.CURSOR_WITH_ALPHA)))
    flow.receive(full(True))
    assert cycle(flow) is None  # confirmed once; the cursor is not new
    flow.receive(SetEncodings((Encoding.DESKTOP_NAME, Encoding.CURSOR_WITH_ALPHA)))
    flow.name_changed()
    flow.cursor_changed(present=True)
    flow.receive(full(True))
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and plan.desktop_name and plan.cursor and not plan.rects


def test_no_cursor_no_cursor_rectangle() -> None:
    flow = fresh(Encoding.CURSOR, sent_first=False)
    flow.receive(full(True))
    plan = cycle(flow)
    assert isinstance(plan, PixelUpdate) and not plan.cursor


# --- the transition table and our own mistakes -------------------------------------------------------------------------


def test_transition_table_is_enforced() -> None:
    assert TRANSITIONS == {(Phase.IDLE, Step.BEGIN_UPDATE): Phase.BUILDING,
                           (Phase.BUILDING, Step.UPDATE_DONE): Phase.IDLE}
    flow = fresh()
    with pytest.raises(LocalProtocolError, match="UPDATE_DONE while the update channel is IDLE"):
        flow.update_done()
    flow.receive(full())
    flow.begin_update(W, H)
    with pytest.raises(LocalProtocolError, match="BEGIN_UPDATE while the update channel is BUILDING"):
        flow.begin_update(W, H)


def test_errors_say_whose_fault() -> None:
    assert RemoteProtocolError("bad byte").blame("the client") == "the client broke the protocol: bad byte"
    assert LocalProtocolError("oops").blame("the client") == "we broke the protocol: oops"
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)


# --- property: random interleavings -------------------------------------------------------------------------------------

_messages = st.one_of(
    st.builds(FramebufferUpdateRequest, st.booleans(), st.integers(0, 100), st.integers(0, 100),
              st.integers(0, 100), st.integers(0, 100)),
    st.builds(EnableContinuousUpdates, st.booleans(), st.integers(0, 100), st.integers(0, 100),
              st.integers(0, 100), st.integers(0, 100)),
    st.builds(ClientFence, st.sampled_from([0, REQ, REQ | BB, REQ | BA, REQ | SN, REQ | BB | SN, REQ | 1 << 9]),
              st.binary(max_size=4)),
    st.just(SetPixelFormat(RGB565)),
    st.just(SetPixelFormat(COLOUR_MAP)),
    st.just(KeyEvent(True, 1)),
    st.just(SetDesktopSize(W, H, (Screen(1, 0, 0, W, H),))),
)
_steps = st.lists(st.one_of(_messages, st.sampled_from(["begin", "done", "damage", "resize"])), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_any_interleaving_keeps_the_rules(steps: list[object]) -> None:
    """Only RemoteProtocolError escapes for client input; no update is planned while held or building;
    a waiting reply comes out only at update_done; every fence request gets exactly one reply."""
    flow = UpdateFlow(W, H)
    replies = 0
    fence_requests = 0
    size = (W, H)
    flow.receive(SetEncodings((Encoding.RAW, Encoding.FENCE, Encoding.CONTINUOUS_UPDATES, Encoding.DESKTOP_SIZE)))
    for step in steps:
        if step == "begin":
            if flow.phase is Phase.BUILDING:
                continue
            held = flow.held
            plan = flow.begin_update(*size)
            assert not (held and plan is not None)
        elif step == "done":
            if flow.phase is Phase.IDLE:
                continue
            replies += sum(isinstance(m, ServerFence) for m in flow.update_done())
        elif step == "damage":
            flow.frame(*size, (Rect(3, 3, 5, 5),))
        elif step == "resize":
            size = (size[1], size[0])
            flow.frame(*size, None)
        else:
            if flow.paused:
                replies += sum(isinstance(m, ServerFence) for m in flow.update_done())
            try:
                out = flow.receive(step)
            except RemoteProtocolError:
                return  # the session ends here
            if isinstance(step, ClientFence) and step.flags & REQ:
                fence_requests += 1
            replies += sum(isinstance(m, ServerFence) for m in out)
            assert not flow.paused or flow.phase is Phase.BUILDING
    if flow.phase is Phase.BUILDING:
        replies += sum(isinstance(m, ServerFence) for m in flow.update_done())
    assert replies == fence_requests


def test_every_rfb_protocol_error_names_its_culprit() -> None:
    """No bare ProtocolError is raised in rfb/ or the session: each says whose fault it is."""
    from pathlib import Path

    import vkmsremote

    root = Path(vkmsremote.__file__).parent
    files = [*root.joinpath("rfb").rglob("*.py"), root / "server" / "session.py"]
    offenders = [f"{f.relative_to(root)}:{n}" for f in files
                 for n, line in enumerate(f.read_text().splitlines(), 1) if "raise ProtocolError(" in line]
    assert offenders == []
