"""Tests of vkmsremote.vm (the test-VM runner, on the host)."""
