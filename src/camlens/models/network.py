"""Whether a download can start at all: checked before a library's own retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def reachable(host: str, timeout: float = 3.0, mirror: str | None = None) -> bool:
    """A TCP connection opens within ``timeout`` seconds to the first of the proxy
    (``HTTPS_PROXY``, ``ALL_PROXY``), the mirror the ``mirror`` environment variable names, or
    ``host:443``. Offline this fails at once, where a download library retries for a minute."""
    via = next((os.environ[v] for v in (*PROXIES, *([mirror] if mirror else [])) if os.environ.get(v)), None)
    address = (host, 443)
    if via:
        parts = urlsplit(via if "://" in via else f"http://{via}")
        try:
            address = (parts.hostname or host, parts.port or (443 if parts.scheme == "https" else 80))
        except ValueError:  # a malformed port: let the download's own error tell
            return True
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False
