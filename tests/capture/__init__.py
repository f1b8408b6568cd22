"""Tests of vkmsremote.capture."""
