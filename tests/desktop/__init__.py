"""Tests of vkmsremote.desktop."""
