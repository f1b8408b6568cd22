"""Local consumers of XR-0: the consumer socket (server, tap), its wire format and the Python client.

A renderer finds XR-0 by name, receives each scanout buffer's dma-buf fds once and hears every flip with
its damage, as an ordinary user (docs/consumer-protocol.md).
"""

from vkmsremote.consumer.client import Consumer, ConsumerFrame, find_socket
from vkmsremote.consumer.protocol import VERSION, ConsumerProtocolError

__all__ = ["VERSION", "Consumer", "ConsumerFrame", "ConsumerProtocolError", "find_socket"]
