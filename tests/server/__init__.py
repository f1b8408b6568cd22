"""Tests of vkmsremote.server."""
