"""Tests of vkmsremote.vkms."""
