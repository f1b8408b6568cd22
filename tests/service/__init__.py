"""Tests of vkmsremote.service."""
