"""vkmsremote: a real KMS connector (VKMS through configfs) served over VNC."""

__version__ = "0.1.0"
