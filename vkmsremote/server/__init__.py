"""The asyncio VNC server: sessions around the sans-IO protocol, frame sources, input sinks."""
