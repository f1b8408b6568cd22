"""RFB (VNC) protocol, RFC 6143 and the community extensions (rfbproto/rfbproto). No I/O here."""
