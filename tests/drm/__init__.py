"""Tests of vkmsremote.drm."""
