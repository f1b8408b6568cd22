"""Tests of vkmsremote.consumer."""
