// vkmsremote's page around noVNC's library (core/rfb.js from the npm package, served under /novnc/).
// Query parameters: scale=0|1 (fit the window, default 1), resize=0|1 (ask the server to resize XR-0 to the
// window, default 1), quality=0..9 (JPEG, default 6), compression=0..9 (default 2), view_only=0|1,
// shared=0|1 (default 1). body[data-state] says where the page is: loading, connecting, verify (RSA-AES
// server key), credentials, connected, disconnected, failed (tests and scripts wait on it).
import RFB from "/novnc/core/rfb.js";

const params = new URLSearchParams(location.search);
const flag = (name, fallback) => (params.has(name) ? params.get(name) !== "0" : fallback);
const level = (name, fallback) => {
  const value = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isInteger(value) && value >= 0 && value <= 9 ? value : fallback;
};

const statusText = document.getElementById("status");
const login = document.getElementById("login");
const verify = document.getElementById("verify");
const setState = (state, text) => {
  document.body.dataset.state = state;
  statusText.textContent = text;
};

const scheme = location.protocol === "https:" ? "wss" : "ws";
const url = `${scheme}://${location.host}/websockify`;
let rfb = null;
let wanted = [];

function connect() {
  setState("connecting", `connecting to ${url}`);
  rfb = new RFB(document.getElementById("screen"), url, { shared: flag("shared", true) });
  rfb.scaleViewport = flag("scale", true);
  rfb.resizeSession = flag("resize", true);
  rfb.qualityLevel = level("quality", 6);
  rfb.compressionLevel = level("compression", 2);
  rfb.viewOnly = flag("view_only", false);
  rfb.addEventListener("connect", () => {
    login.hidden = true;
    setState("connected", "connected");
    rfb.focus();
  });
  // RSA-AES (RA2ne): noVNC waits until the user has compared the server key's fingerprint with the one
  // the server printed at start (the first 8 bytes of SHA-1 over the key as sent, as TigerVNC shows it).
  rfb.addEventListener("serververification", async (event) => {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", event.detail.publickey));
    const fingerprint = Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("-");
    document.getElementById("fingerprint").textContent = fingerprint;
    verify.hidden = false;
    setState("verify", "compare the server key's fingerprint");
    document.getElementById("accept-key").focus();
  });
  rfb.addEventListener("credentialsrequired", (event) => {
    wanted = event.detail.types;
    document.getElementById("user-row").hidden = !wanted.includes("username");
    login.hidden = false;
    setState("credentials", "the server asks for a password");
    document.getElementById(wanted.includes("username") ? "username" : "password").focus();
  });
  rfb.addEventListener("securityfailure", (event) => {
    setState("failed", `refused: ${event.detail.reason || "authentication failed"}`);
  });
  rfb.addEventListener("desktopname", (event) => {
    document.title = event.detail.name;
    document.getElementById("name").textContent = event.detail.name;
  });
  rfb.addEventListener("disconnect", (event) => {
    if (document.body.dataset.state === "failed") return;
    setState("disconnected", event.detail.clean ? "disconnected" : "connection lost; reload to reconnect");
  });
}

verify.addEventListener("submit", (event) => {
  event.preventDefault();
  verify.hidden = true;
  setState("connecting", "server key accepted");
  rfb.approveServer();
});

login.addEventListener("submit", (event) => {
  event.preventDefault();
  const credentials = { password: document.getElementById("password").value };
  if (wanted.includes("username")) credentials.username = document.getElementById("username").value;
  login.hidden = true;
  setState("connecting", "authenticating");
  rfb.sendCredentials(credentials);
});

window.vkmsremote = { get rfb() { return rfb; } };
connect();
