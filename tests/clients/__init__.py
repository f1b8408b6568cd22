"""Tests against real VNC clients (and the helpers they share with the server tests)."""
