"""The web listener: RFB over WebSocket (RFC 6455) and Debian's noVNC page on one HTTP(S) port."""

from vkmsremote.web.server import DEFAULT_WEB_PORT, WebConfig, WebServer, start_web_server

__all__ = ["DEFAULT_WEB_PORT", "WebConfig", "WebServer", "start_web_server"]
