"""noVNC (Debian's novnc 1.3, the fallback when the npm install is missing) in real headless Chromium against our server.

The browser is driven by Selenium through Debian's chromedriver (a thin wrapper keeps the test's own
words). The frame source is synthetic: large solid-colour blocks, so neither Tight's JPEG nor noVNC's
scaling can blur the check; the test compares pixels from a WebDriver screenshot of the canvas against
the served frame, then types into the page and checks the KeyEvents reaching the server's InputSink.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import ElementNotInteractableException, NoSuchElementException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from vkmsremote.frame import Cursor, Frame
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.server.app import VncServer
from vkmsremote.server.input import RecordingSink
from vkmsremote.server.session import Session
from vkmsremote.web.http import landing_location
from vkmsremote.web.novnc import DEBIAN_ROOT
from vkmsremote.web.server import WebConfig, WebServer, start_web_server
from web.test_web_novnc import CHROMEDRIVER, CHROMIUM, chromium

T = TypeVar("T")



class WebDriver:
    """The handful of browser actions this test needs, on Selenium (Debian's chromedriver, named explicitly
    so that Selenium Manager never runs)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def navigate(self, url: str) -> None:
        self.driver.get(url)

    def execute(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, element: WebElement) -> None:
        element.click()

    def send_keys(self, element: WebElement, text: str) -> None:
        element.send_keys(text)

    def element_screenshot(self, element: WebElement) -> bytes:
        return element.screenshot_as_png

    def type_keys(self, text: str) -> None:
        """Key actions to whatever has focus (the canvas after a click), one down/up per character."""
        ActionChains(self.driver).send_keys(text).perform()

    def cdp(self, cmd: str, params: dict[str, Any]) -> Any:
        return self.driver.execute_cdp_cmd(cmd, params)

    def quit(self) -> None:
        self.driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 45.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False and not (isinstance(value, list | tuple | str) and not value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """A fresh headless Chromium profile through chromedriver, torn down whatever happens (one per module:
    each test's server has its own port, hence its own origin and noVNC settings)."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            pytest.fail(f"{tool} missing: run scripts/setup-host.sh (Debian chromium, chromium-driver)")
    profile = tempfile.mkdtemp(prefix="vkmsremote-chromium-")
    driver = WebDriver(chromium(None, f"--user-data-dir={profile}"))
    try:
        assert driver.driver.capabilities["browserName"] in ("chrome", "chromium"), driver.driver.capabilities
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


# Ready for a user's next action: laid out with a size, nothing on its way in or out (no running CSS transition
# on it or an ancestor: noVNC's panels fade and slide for 0.5 s), fully opaque and visible, and the topmost
# element at its centre (so a click or keys land on it, not on a dialog or the connect overlay above it).
# A class such as noVNC_open is set at the *start* of the transition, before any of this holds.
INTERACTABLE_JS = """
const el = arguments[0];
const r = el.getBoundingClientRect();
if (r.width === 0 || r.height === 0) return false;
if (getComputedStyle(el).visibility !== 'visible') return false;
for (let e = el; e; e = e.parentElement) {
    const cs = getComputedStyle(e);
    if (cs.display === 'none' || parseFloat(cs.opacity) < 1) return false;
    if (e.getAnimations().some(a => a.playState === 'running')) return false;
}
const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
return hit === el || el.contains(hit);
"""

# Gone for good: not displayed, or hidden with no transition still running on it.
GONE_JS = """
const el = arguments[0];
if (el.getAnimations().some(a => a.playState === 'running')) return false;
const cs = getComputedStyle(el);
return cs.display === 'none' || cs.visibility === 'hidden';
"""


def wait_interactable(browser: WebDriver, css: str, what: str, timeout: float = 45.0) -> WebElement:
    """The element matching ``css`` once a user could use it (INTERACTABLE_JS)."""
    element: WebElement = wait_for(f"{what} to be present", lambda: _find_or_none(browser, css), timeout)
    wait_for(f"{what} to be interactable", lambda: browser.execute(INTERACTABLE_JS, element),
             timeout)
    return element


def _find_or_none(browser: WebDriver, css: str) -> WebElement | None:
    try:
        return browser.find(css)
    except NoSuchElementException:
        return None


def decode_png(data: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----- the server side: a block source, the real RFB session, the web listener, in a loop thread -----

WIDTH, HEIGHT = 480, 320
BLOCK_RGB = (  # 3 x 2 blocks of 160 x 160; no two alike, and none symmetric under an R/B swap
    (220, 30, 40), (30, 200, 60), (40, 60, 230),
    (250, 210, 20), (20, 200, 210), (150, 40, 190),
)


def block_frame(colours: tuple[tuple[int, int, int], ...]) -> npt.NDArray[np.uint8]:
    pixels = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    bw, bh = WIDTH // 3, HEIGHT // 2
    for i, (r, g, b) in enumerate(colours):
        x, y = (i % 3) * bw, (i // 3) * bh
        pixels[y:y + bh, x:x + bw] = (b, g, r, 0)  # XRGB8888 in memory: B, G, R, X
    return pixels


class BlockSource:
    """A FrameSource showing BLOCK_RGB; ``show()`` (from any thread) publishes new block colours."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pixels = block_frame(BLOCK_RGB)
        self._serial = 0
        self._changed = asyncio.Event()

    @property
    def desktop_name(self) -> str:
        return "XR-0 (test blocks)"

    async def next_frame(self) -> Frame:
        if self._serial:
            await self._changed.wait()
            self._changed.clear()
        self._serial += 1
        return Frame(self._pixels, self._serial, None)

    def cursor(self) -> Cursor | None:
        return None

    async def close(self) -> None:
        pass

    def show(self, colours: tuple[tuple[int, int, int], ...]) -> None:
        def swap() -> None:
            self._pixels = block_frame(colours)
            self._changed.set()
        self._loop.call_soon_threadsafe(swap)


class ServerThread:
    """Our VNC server (hub + sessions) and web listener on an event loop in a background thread."""

    def __init__(self, policy: SecurityPolicy | None = None) -> None:
        self.policy = policy
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vkmsremote-test-server", daemon=True)
        self.source = BlockSource(self.loop)
        self.sink = RecordingSink()
        self.sessions: list[Session] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.vnc = VncServer(self.source, self.sink, host="127.0.0.1", port=0, policy=self.policy)
        self.call(self.vnc.start())

        async def rfb_over_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(self.vnc.ctx, reader, writer)
            self.sessions.append(session)
            await session.run()

        self.web: WebServer = self.call(start_web_server(rfb_over_websocket, "127.0.0.1", 0,
                                                          config=WebConfig(novnc_root=DEBIAN_ROOT)))

    def stop(self) -> None:
        try:
            self.call(self.web.close())
            self.call(self.vnc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


PASSWORD = "s3cret"


@pytest.fixture(params=["none", "vncauth"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """Security None (the loopback default), and VNC authentication as with --password."""
    policy = None
    if request.param == "vncauth":
        policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=PASSWORD.encode())
    srv = ServerThread(policy)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def block_centres(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Centres of the six blocks in an image of ``shape`` showing the whole framebuffer, scaled."""
    sy, sx = shape[0] / HEIGHT, shape[1] / WIDTH
    bw, bh = WIDTH // 3, HEIGHT // 2
    return [(round(((i // 3) * bh + bh / 2) * sy), round(((i % 3) * bw + bw / 2) * sx)) for i in range(6)]


def blocks_match(image: npt.NDArray[np.uint8], colours: tuple[tuple[int, int, int], ...], tol: int = 12) -> bool:
    """Every block's central 21x21 patch of the screenshot has the served colour (JPEG/scaling tolerance)."""
    for (cy, cx), rgb in zip(block_centres(image.shape), colours, strict=True):
        patch = image[cy - 10:cy + 11, cx - 10:cx + 11].astype(np.int16)
        if patch.size == 0 or np.abs(patch - np.array(rgb, np.int16)).max() > tol:
            return False
    return True


def test_novnc_shows_xr0_and_types_into_it(browser: WebDriver, server: ServerThread) -> None:
    started = time.monotonic()
    browser.navigate(server.web.url)
    assert "/vnc.html?autoconnect=1" in browser.execute("return location.href")
    if server.policy is not None:  # noVNC's credentials dialog, filled in like a user would
        password = wait_interactable(browser, "#noVNC_password_input", "the password field")
        browser.send_keys(password, PASSWORD)
        wait_for("the password in its field", lambda: browser.execute(
            "return arguments[0].value", password) == PASSWORD)
        browser.click(wait_interactable(browser, "#noVNC_credentials_button", "the Send Credentials button"))
    status = "return document.getElementById('noVNC_status').textContent"
    try:
        wait_for("noVNC to connect", lambda: browser.execute(  # ui.js updateVisualState('connected')
            "return document.documentElement.classList.contains('noVNC_connected')"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}; noVNC says {browser.execute(status)!r}; "
                             f"sessions: {[s.record for s in server.sessions]}") from None
    if server.policy is not None:  # the dialog slides away over the canvas for 0.5 s
        dialog = browser.find("#noVNC_credentials_dlg")
        wait_for("the credentials dialog to close", lambda: browser.execute(GONE_JS, dialog))
    canvas = browser.find("#noVNC_container canvas")
    size = browser.execute("const c = arguments[0]; return [c.width, c.height];", canvas)
    assert size == [WIDTH, HEIGHT]  # the canvas is the framebuffer; resize=scale only scales its CSS box

    # what noVNC 1.3 asked for, and what the session made of it
    wait_for("the WebSocket session", lambda: server.sessions and server.sessions[0].record.client_encodings)
    record = server.sessions[0].record
    assert record.security_type == (SecurityType.VNC_AUTH if server.policy else SecurityType.NONE)
    assert record.client_encodings[:6] == (Encoding.COPY_RECT, Encoding.TIGHT, -260, Encoding.HEXTILE,
                                           Encoding.RRE, Encoding.RAW)
    assert Encoding.ZRLE not in record.client_encodings and Encoding.ZLIB not in record.client_encodings
    assert record.encoding == Encoding.TIGHT
    assert (record.pixel_format.red_shift, record.pixel_format.blue_shift) == (0, 16)  # RGBX, not our XRGB

    screenshot = wait_for("the blocks on screen", lambda: _shot_if(browser, canvas, BLOCK_RGB))
    assert screenshot.shape[1] > WIDTH  # scaled up to the 900x700 window: the check survived scaling
    assert not blocks_match(screenshot[..., ::-1], BLOCK_RGB)  # the check tells red from blue
    first_frame_s = time.monotonic() - started

    # a change at the source reaches the page (incremental updates over the WebSocket)
    changed = tuple(reversed(BLOCK_RGB))
    server.source.show(changed)
    wait_for("the changed blocks", lambda: _shot_if(browser, canvas, changed))

    # a click and typing reach the server's InputSink; the keys go to whatever has focus, so wait for the
    # click to have given it to the canvas (noVNC focuses it on mousedown) and to have reached the server
    wait_interactable(browser, "#noVNC_container canvas", "the canvas")
    browser.click(canvas)
    wait_for("the canvas to have the focus", lambda: browser.execute(
        "return document.activeElement === arguments[0]", canvas))

    def clicked() -> bool:  # button 1 went down and is up again
        buttons = [e[3] for e in server.sink.events if e[0] == "pointer"]
        return 1 in buttons and buttons[-1] == 0

    wait_for("the click at the server", clicked)
    browser.type_keys("Hi")

    def typed() -> list[tuple[object, object]]:
        keys = [(e[1], e[-1]) for e in server.sink.events if e[0] in ("key", "scancode")]
        return keys if len(keys) >= 4 else []

    keys = wait_for("KeyEvents at the server", typed)
    assert keys == [(0x48, True), (0x48, False), (0x69, True), (0x69, False)]  # XK_H, XK_i
    pointer = [e for e in server.sink.events if e[0] == "pointer"]
    assert any(e[3] == 1 for e in pointer) and pointer[-1][3] == 0  # button 1 down, then up
    _, x, y, _ = pointer[-1]
    assert isinstance(x, int) and isinstance(y, int)
    assert abs(x - WIDTH // 2) <= 2 and abs(y - HEIGHT // 2) <= 2  # the canvas centre, in framebuffer pixels
    print(f"\nnoVNC: first correct frame {first_frame_s:.2f} s after navigate; "
          f"test body {time.monotonic() - started:.2f} s; events: {server.sink.events}")


def _shot_if(browser: WebDriver, canvas: WebElement,
             colours: tuple[tuple[int, int, int], ...]) -> npt.NDArray[np.uint8] | None:
    image = decode_png(browser.element_screenshot(canvas))
    return image if blocks_match(image, colours) else None


def test_the_password_field_is_not_usable_while_its_dialog_fades_in(browser: WebDriver) -> None:
    """The race behind the old flake, made certain: with the page's animations paused, noVNC's credentials
    dialog has its noVNC_open class (what the test used to wait for) but is still transparent, so typing into
    it fails ("element not interactable") and INTERACTABLE_JS says no; once the fade runs, it says yes."""
    srv = ServerThread(SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=PASSWORD.encode()))
    srv.start()
    try:
        # "/" redirects to noVNC with autoconnect=1; the same page without it waits for the Connect button
        origin = srv.web.url.split("/", 3)[:3]
        browser.navigate("/".join([*origin, landing_location().lstrip("/").replace("autoconnect=1", "autoconnect=0")]))
        connect = wait_interactable(browser, "#noVNC_connect_button", "the Connect button")
        browser.cdp("Animation.setPlaybackRate", {"playbackRate": 0})
        browser.click(connect)
        wait_for("the credentials dialog's noVNC_open class", lambda: browser.execute(
            "return document.getElementById('noVNC_credentials_dlg').classList.contains('noVNC_open')"))
        password = browser.find("#noVNC_password_input")
        assert browser.execute(INTERACTABLE_JS, password) is False
        with pytest.raises(ElementNotInteractableException):
            browser.send_keys(password, PASSWORD)
        browser.cdp("Animation.setPlaybackRate", {"playbackRate": 1})
        browser.send_keys(wait_interactable(browser, "#noVNC_password_input", "the password field"), PASSWORD)
        browser.click(wait_interactable(browser, "#noVNC_credentials_button", "the Send Credentials button"))
        wait_for("noVNC to connect", lambda: browser.execute(
            "return document.documentElement.classList.contains('noVNC_connected')"))
        assert [s.record.outcome for s in srv.sessions] == ["running"]
    finally:
        srv.stop()
