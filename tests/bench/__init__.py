"""Tests of vkmsremote.bench."""
