"""Tests of vkmsremote.web."""
