"""Capturing what a CRTC scans out: the framebuffer reader (crtc), damage tracking (damage), pixel format
conversion (convert), writeback capture (writeback) and a page-flipping test-pattern driver (driver)."""
