"""``python -m vkmsremote``: the same as the ``vkmsremote`` command."""

from vkmsremote.cli import main

raise SystemExit(main())
