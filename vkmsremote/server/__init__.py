"""The asyncio VNC server: sessions around the sans-IO protocol, frame sources, input sinks."""

DEFAULT_PORT = 5900
"""The VNC port of display :0 (RFC 6143 section 1: 5900 + display number)."""
