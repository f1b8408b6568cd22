"""Tests of vkmsremote.rfb."""
