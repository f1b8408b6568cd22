"""The fuzz campaign in short (scripts/fuzz.py runs the long one): every target fed by hypothesis under
tracemalloc with a time bound, a short coverage-guided atheris run of all targets in one child, proof that
the harness reports a crash and a hang when there is one, and the inputs the campaign found bugs with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vkmsremote.errors import ProtocolError
from vkmsremote.web import http

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vkmsremote_fuzz_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


fuzz = _load()
TIME_LIMIT = 1.0
MEMORY_LIMIT = 4 << 20  # Python allocations for one input of at most a few KiB


def _bounded(name: str, data: bytes) -> None:
    """One input through a target: only ProtocolError may escape, within time and traced memory."""
    target = fuzz.TARGETS[name]
    fuzz.env()  # shared state made outside the measurement
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        target(data)
    except ProtocolError:
        pass
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT, f"{name} took {elapsed:.2f} s on {data[:64]!r}"
    assert peak < MEMORY_LIMIT, f"{name} allocated {peak} bytes on {data[:64]!r}"


def _inputs(name: str) -> st.SearchStrategy[bytes]:
    """Random bytes, and seeds with random bytes spliced in (so the deep states are reached too)."""
    seeds = fuzz.seeds(name)
    spliced = st.tuples(st.sampled_from(seeds), st.integers(0, 4096), st.binary(max_size=64)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    return st.one_of(st.binary(max_size=512), spliced)


@pytest.mark.parametrize("name", ["rfb-handshake", "rfb-messages", "websocket", "http"])
def test_target_parses_or_raises_protocol_error(name: str) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_inputs(name))
    def check(data: bytes) -> None:
        _bounded(name, data)

    check()


def test_tls_target_parses_or_raises_protocol_error() -> None:
    # Each input costs a real TLS handshake (~1 ms of ECDSA), so fewer of them.
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_inputs("rfb-tls"))
    def check(data: bytes) -> None:
        _bounded("rfb-tls", data)

    check()


def test_rsaaes_target_parses_or_raises_protocol_error() -> None:
    # Inputs past the key exchange cost a 1024-bit RSA private-key operation each.
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_inputs("rfb-rsaaes"))
    def check(data: bytes) -> None:
        _bounded("rfb-rsaaes", data)

    check()


def test_rsaaes_seeds_reach_normal_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variant's stage-5 seed, and the stage-3/4 seeds of RA2/RA2_256, authenticate through real AES-EAX
    records and have every message acted on; the last seed's wrong password is refused."""
    handled: list[object] = []
    original = fuzz._MessageSink.handle

    def handle(self: object, ev: object) -> None:
        handled.append(ev)
        original(self, ev)

    monkeypatch.setattr(fuzz._MessageSink, "handle", handle)
    *seeds, wrong = fuzz.seeds("rfb-rsaaes")
    deep = 0
    for seed in seeds:
        variant, stage = seed[0] & 3, (seed[0] >> 2) % fuzz.RA2_STAGES
        handled.clear()
        fuzz.target_rfb_rsaaes(seed)
        if stage == 5 or (stage in (3, 4) and variant in (0, 2)):  # RA2, RA2_256: one record may hold it all
            deep += 1
            # every sample message (one sample is a key press and its release), the last one included
            assert len(handled) == len(fuzz._messages_sample()) + 1, (seed[:2], handled)
            assert type(handled[-1]).__name__ == "QemuExtendedKeyEvent"
    assert deep == 2 * (4 + 2 + 2)
    handled.clear()
    fuzz.target_rfb_rsaaes(wrong)
    assert [type(e).__name__ for e in handled] == ["AuthenticationFailed"]


def test_seeds_reach_the_deep_states() -> None:
    """The seeds are what let the fuzzer start inside each state: they must get there."""
    e = fuzz.env()
    conn = fuzz._normal_connection()
    assert conn.state is e.protocol.State.NORMAL
    for seed in fuzz.seeds("rfb-tls"):
        fuzz.target_rfb_tls(seed)  # an authenticated TLS session with messages: no exception at all
    sink = fuzz._MessageSink()
    conn.receive_data(b"".join(fuzz._messages_sample()))
    for ev in fuzz._drain_rfb(conn, 100):
        sink.handle(ev)
    assert sink.encodes >= 1 and sink.pf != e.NATIVE  # encoders ran, in the client's pixel format


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def test_short_coverage_guided_campaign() -> None:
    pytest.importorskip("atheris", reason="atheris has wheels for x86_64 only")
    done = _run("--targets", "mixed", "--runs", "1500")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["inputs"] >= 1500
    assert summary["crashes"] == summary["hangs"] == summary["ooms"] == 0
    assert summary["targets"]["mixed"]["coverage"] > 100  # libFuzzer saw the instrumented vkmsremote code


def test_harness_reports_crashes_and_hangs() -> None:
    pytest.importorskip("atheris", reason="atheris has wheels for x86_64 only")
    procs = {kind: subprocess.Popen([sys.executable, str(SCRIPT), "--targets", "canary", "--runs", "20",
                                     "--timeout", "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=dict(os.environ, VKMSREMOTE_FUZZ_CANARY=kind))
             for kind in ("crash", "hang")}
    results = {kind: p.communicate(timeout=240) for kind, p in procs.items()}
    for kind, (out, _) in results.items():
        assert procs[kind].returncode == 1, f"the {kind} canary did not fail the run"
        summary = json.loads(out)
        assert summary["crashes" if kind == "crash" else "hangs"] >= 1, summary
        assert summary["targets"]["canary"]["artifacts"], "the input that failed was not kept"


@pytest.mark.parametrize("line", [
    b"GET /%2e%2e$\xa3\xb7\xcc/etc/passwd HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    b"GET \xf1\xa7/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /novnc/%ff HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_non_ascii_request_target_is_refused(line: bytes) -> None:
    """Found by the campaign (against the hand-written parser): a target with bytes >= 0x80 raised
    UnicodeDecodeError. Now websockets parses the head and request_path refuses what is not UTF-8."""
    fuzz.target_http(b"\x00" + line)  # must not raise
    with pytest.raises(ValueError):
        http.request_path("/novnc/%ff")
