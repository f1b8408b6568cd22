"""The desktop around XR-0: which compositor drives the card, and binding vkmsremote's pointer to XR-0.

- :mod:`.clients`: the DRM clients of a card (debugfs ``clients``, or /proc fds) and its DRM master.
- :mod:`.sway_ipc`: the i3/sway IPC wire format (sans-IO) and a tiny blocking client.
- :mod:`.binding`: ``--pointer-output auto|none|NAME``: detect the compositor, bind the uinput absolute
  pointer to XR-0's output its own way (Weston: udev ``WL_OUTPUT``; sway: ``map_to_output``; Xorg: the
  reader's placement), print the exact command when it cannot, undo on exit.
"""

from .binding import (
    POINTER_DEVICE_NAME,
    Binding,
    BindingPlan,
    Compositor,
    apply_binding,
    plan_binding,
)
from .clients import DrmClient, card_clients, drm_master

__all__ = [
    "POINTER_DEVICE_NAME",
    "Binding",
    "BindingPlan",
    "Compositor",
    "DrmClient",
    "apply_binding",
    "card_clients",
    "drm_master",
    "plan_binding",
]
