"""Local consumers of XR-0: the consumer socket (server, tap), its wire format and the Python client.

A renderer finds XR-0 by name, receives each scanout buffer's dma-buf fds once and hears every flip with
its damage, as an ordinary user (docs/consumer-protocol.md). The names below are loaded on first use, so
that importing a light submodule (``options``, for the CLI's parser) does not load numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vkmsremote.consumer.client import Consumer, ConsumerFrame, find_socket
    from vkmsremote.consumer.protocol import VERSION, ConsumerProtocolError

__all__ = ["VERSION", "Consumer", "ConsumerFrame", "ConsumerProtocolError", "find_socket"]
_WHERE = {"Consumer": "client", "ConsumerFrame": "client", "find_socket": "client", "VERSION": "protocol",
          "ConsumerProtocolError": "protocol"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"vkmsremote.consumer.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'vkmsremote.consumer' has no attribute {name!r}")
