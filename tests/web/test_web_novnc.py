"""noVNC 1.7 (from the npm registry) in real headless Chromium, over HTTPS, against our server.

The browser is Debian's Chromium driven by Selenium through Debian's chromedriver. The page is ours
(vkmsremote/web/page/) around noVNC's library; the listener serves https with a self-signed certificate
that this test's browser trusts by its public key's SHA-256 (Chromium's --ignore-certificate-errors-spki-list,
which trusts exactly that key and nothing else). Pixels are read from noVNC's canvas with getImageData at
scale 1, so the check is exact, for each encoding the server is told to use (Tight and ZRLE).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from vkmsremote.frame import Cursor, Frame
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.rfb.rsaaes import ServerKey
from vkmsremote.server.app import VncServer
from vkmsremote.server.input import RecordingSink
from vkmsremote.server.session import Session
from vkmsremote.server.tls import generate_self_signed, server_context
from vkmsremote.web.novnc import NPM_ROOT
from vkmsremote.web.server import WebConfig, WebServer, start_web_server

T = TypeVar("T")
CHROMIUM = Path("/usr/lib/chromium/chromium")  # the binary behind Debian's /usr/bin/chromium wrapper script
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 320, 200
PASSWORD = "s3cret"


def picture(seed: int) -> npt.NDArray[np.uint8]:
    """Solid blocks, a one-pixel checkerboard and a few-colour stripe pattern: every encoder keeps it
    lossless (Tight sends fills and palettes for it, never JPEG), so the canvas must equal it exactly."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    pixels[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    pixels[20:90, 10:150, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    yy, xx = np.mgrid[0:60, 0:100]
    pixels[110:170, 180:280, :3] = np.where(((yy + xx) % 2 == 0)[..., None], (250, 250, 250), (5, 5, 5))
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    pixels[100:190, 10:160, :3] = palette[(np.arange(150) // 7 % 4)][None, :, :]
    return pixels


class StillSource:
    """A FrameSource showing one picture; ``show()`` (from any thread) publishes another."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.pixels = picture(1)
        self._serial = 0
        self._changed = asyncio.Event()

    @property
    def desktop_name(self) -> str:
        return "XR-0 (card0 Virtual-1)"

    async def next_frame(self) -> Frame:
        if self._serial:
            await self._changed.wait()
            self._changed.clear()
        self._serial += 1
        return Frame(self.pixels, self._serial, None)

    def cursor(self) -> Cursor | None:
        return None

    async def close(self) -> None:
        pass

    def show(self, pixels: npt.NDArray[np.uint8]) -> None:
        def swap() -> None:
            self.pixels = pixels
            self._changed.set()
        self._loop.call_soon_threadsafe(swap)


class HttpsServer:
    """Our VNC server and HTTPS web listener on an event loop in a background thread."""

    def __init__(self, tmp: Path, policy: SecurityPolicy | None, encodings: frozenset[int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.source = StillSource(self.loop)
        self.sink = RecordingSink()
        self.sessions: list[Session] = []
        self.cert, self.key = tmp / "cert.pem", tmp / "key.pem"
        generate_self_signed(self.cert, self.key)
        self.thread.start()
        self.vnc = VncServer(self.source, self.sink, host="127.0.0.1", port=0, policy=policy)
        self.call(self.vnc.start())
        ctx = dataclasses.replace(self.vnc.ctx, encodings=encodings)

        async def rfb_over_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(ctx, reader, writer)
            self.sessions.append(session)
            await session.run()

        self.web: WebServer = self.call(start_web_server(
            rfb_over_websocket, "127.0.0.1", 0, ssl=server_context(self.cert, self.key),
            config=WebConfig(novnc_root=NPM_ROOT, title="XR-0 - vkmsremote")))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spki_sha256(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def stop(self) -> None:
        try:
            self.call(self.web.close())
            self.call(self.vnc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=900,700",
)


def chromium(trusted_spki: str | None, *extra: str) -> webdriver.Chrome:
    """Debian's headless Chromium through Debian's chromedriver; ``extra``: more command-line flags."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, *extra):
        options.add_argument(flag)
    if trusted_spki:
        options.add_argument(f"--ignore-certificate-errors-spki-list={trusted_spki}")
    # an explicit driver path: Selenium Manager never runs (it would try to download a driver)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def wait_until(driver: webdriver.Chrome, what: str, check: Callable[[webdriver.Chrome], Any],
               timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, f"timed out waiting for {what}")


def page_state(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.body.dataset.state"))


def canvas_pixels(driver: webdriver.Chrome) -> npt.NDArray[np.uint8] | None:
    """noVNC's canvas read with getImageData: (h, w, 4) RGBA, or None before it has the framebuffer's size."""
    data = driver.execute_script(
        "const c = document.querySelector('#screen canvas');"
        "if (!c || c.width !== arguments[0] || c.height !== arguments[1]) return null;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = ''; for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));"
        "return btoa(s);", WIDTH, HEIGHT)
    if data is None:
        return None
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(HEIGHT, WIDTH, 4)


def shows(driver: webdriver.Chrome, pixels: npt.NDArray[np.uint8]) -> bool:
    got = canvas_pixels(driver)
    return got is not None and bool(np.array_equal(got[..., :3], pixels[..., 2::-1]))  # RGBA vs B, G, R, X


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], webdriver.Chrome]]:
    """A factory: one Chromium per test (each trusts only its server's key), all quit at the end."""
    drivers: list[webdriver.Chrome] = []

    def make(spki: str) -> webdriver.Chrome:
        driver = chromium(spki)
        drivers.append(driver)
        return driver

    yield make
    for d in drivers:
        d.quit()


def rsa_key() -> ServerKey:
    global _RSA_KEY
    if _RSA_KEY is None:
        _RSA_KEY = ServerKey.generate()
    return _RSA_KEY


_RSA_KEY: ServerKey | None = None
POLICIES: dict[str, Callable[[], SecurityPolicy | None]] = {
    "none": lambda: None,
    "vncauth": lambda: SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=PASSWORD.encode()),
    # the order vkmsremote offers by default with a password: noVNC 1.7 takes the first it speaks, RA2ne
    "ra2ne": lambda: SecurityPolicy(types=(SecurityType.RA2_256, SecurityType.RA2, SecurityType.RA2NE_256,
                                           SecurityType.RA2NE, SecurityType.VNC_AUTH),
                                    vnc_password=PASSWORD.encode(), rsa_key=rsa_key()),
}


@pytest.mark.parametrize("encoding,auth", [(Encoding.TIGHT, "vncauth"), (Encoding.ZRLE, "none"),
                                           (Encoding.TIGHT, "ra2ne")])
def test_novnc17_over_https_shows_xr0_exactly_and_types(tmp_path: Path, browser: Callable[[str], webdriver.Chrome],
                                                         encoding: int, auth: str) -> None:
    policy = POLICIES[auth]()
    server = HttpsServer(tmp_path, policy, frozenset({encoding}))
    try:
        driver = browser(server.spki_sha256())
        assert server.web.url.startswith("https://127.0.0.1:")
        started = time.monotonic()
        driver.get(server.web.url + "?scale=0&resize=0")
        # the page's own title until the server's desktop name replaces it (which can be at once)
        assert driver.title in ("XR-0 - vkmsremote", "XR-0 (card0 Virtual-1)")
        if auth == "ra2ne":  # our page shows the RSA key's fingerprint: it must be the one the server prints
            wait_until(driver, "the server key check", lambda d: page_state(d) == "verify")
            assert policy is not None and policy.rsa_key is not None
            assert driver.find_element(By.ID, "fingerprint").text == policy.rsa_key.fingerprint
            driver.find_element(By.ID, "accept-key").click()
        if policy is not None:  # our page's password form, filled in like a user would
            wait_until(driver, "the password prompt", lambda d: page_state(d) == "credentials")
            field = wait_until(driver, "a usable password field",
                               lambda d: (e := d.find_element(By.ID, "password")).is_displayed() and e.is_enabled() and e)
            field.send_keys(PASSWORD + Keys.ENTER)
        try:
            wait_until(driver, "noVNC to connect", lambda d: page_state(d) == "connected")
        except Exception as exc:
            status = driver.find_element(By.ID, "status").text
            raise AssertionError(f"{exc}; page says {status!r}; sessions {[s.record for s in server.sessions]}") from None
        wait_until(driver, "the desktop name as the title", lambda d: d.title == "XR-0 (card0 Virtual-1)")
        wait_until(driver, "the exact first frame", lambda d: shows(d, server.source.pixels))
        first_frame_s = time.monotonic() - started
        record = server.sessions[0].record
        # noVNC 1.7 asks for what 1.3 could not decode; the server answers in the one encoding it may use
        # (SetEncodings follows "connect" at once: it is in by the time a frame is on the canvas)
        assert {Encoding.ZRLE, Encoding.TIGHT, Encoding.EXTENDED_DESKTOP_SIZE} <= set(record.client_encodings)
        assert record.encoding == encoding
        assert record.security_type == {"none": SecurityType.NONE, "vncauth": SecurityType.VNC_AUTH,
                                        "ra2ne": SecurityType.RA2NE}[auth]

        changed = picture(2)
        server.source.show(changed)
        wait_until(driver, "the exact changed frame", lambda d: shows(d, changed))
        assert record.rect_encodings[encoding] >= 2

        canvas = driver.find_element(By.CSS_SELECTOR, "#screen canvas")
        canvas.click()
        webdriver.ActionChains(driver).send_keys("Hi").perform()

        def typed(_: object) -> list[tuple[object, object]]:
            keys = [(e[1], e[-1]) for e in server.sink.events if e[0] in ("key", "scancode")]
            return keys if len(keys) >= 4 else []

        keys = wait_until(driver, "KeyEvents at the server", typed)
        assert keys == [(0x48, True), (0x48, False), (0x69, True), (0x69, False)]  # XK_H, XK_i
        pointer = [e for e in server.sink.events if e[0] == "pointer"]
        assert any(e[3] == 1 for e in pointer) and pointer[-1][3] == 0  # button 1 down, then up
        _, x, y, _ = pointer[-1]
        assert abs(int(x) - WIDTH // 2) <= 1 and abs(int(y) - HEIGHT // 2) <= 1  # the canvas centre, 1:1
        print(f"\nnoVNC 1.7 over https ({encoding=}): first exact frame {first_frame_s:.2f} s after navigate")
    finally:
        server.stop()


def test_served_page_needs_the_certificate(tmp_path: Path) -> None:
    """Without trusting the key, Chromium refuses the page: the test above proves trust by fingerprint."""
    server = HttpsServer(tmp_path, None, frozenset({Encoding.ZRLE}))
    driver = chromium(None)
    try:
        driver.get(server.web.url)
        time.sleep(1)
        assert page_state(driver) != "connected"
        assert "XR-0" not in driver.title
        assert server.sessions == []
    finally:
        driver.quit()
        server.stop()


def _fingerprint_of_peer(port: int) -> str:
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the point is to read the certificate and compare its fingerprint
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_serve_off_loopback_is_https_with_a_printed_fingerprint(tmp_path: Path) -> None:
    """`serve --web --listen 0.0.0.0` (as a tablet on the LAN would use it): https with the self-signed
    certificate made once under the TLS directory, its fingerprint printed; on loopback plain http."""
    import re
    import ssl
    import sys
    import urllib.request

    sys.path.insert(0, str(Path(__file__).parent))
    from clients.support import serving

    env = {"VKMSREMOTE_PASSWORD": "pw-for-web", "XDG_CONFIG_HOME": str(tmp_path)}
    with serving("--source", "pattern", "--web", "0", "--listen", "0.0.0.0", env=env) as (proc, _):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"open https://([^/]+):(\d+)/ in a browser; the certificate's SHA-256 fingerprint is "
                      r"([0-9A-F:]{95}) ", line)
        assert m is not None, line
        web_port, printed = int(m.group(2)), m.group(3)
        assert _fingerprint_of_peer(web_port) == printed
        cert = tmp_path / "vkmsremote" / "tls" / "cert.pem"
        assert (cert.parent / "key.pem").stat().st_mode & 0o777 == 0o600
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        assert ":".join(f"{b:02X}" for b in loaded.fingerprint(hashes.SHA256())) == printed
        ctx = ssl.create_default_context(cafile=str(cert))  # the self-signed certificate is its own CA
        with urllib.request.urlopen(f"https://127.0.0.1:{web_port}/", context=ctx, timeout=10) as resp:
            page = resp.read().decode()
        assert "<title>XR-0 test pattern" in page or ("<title>" in page and "pattern" in page.lower()), page[:300]
    with serving("--source", "pattern", "--web", "0", env={"XDG_CONFIG_HOME": str(tmp_path)}) as (proc, _):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.search(r"open http://127\.0\.0\.1:\d+/ in a browser$", line.strip()), line
