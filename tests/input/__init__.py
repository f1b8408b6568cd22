"""Tests of vkmsremote.input."""
