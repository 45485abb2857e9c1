"""Credentials out of what scfm writes: URLs lose their user:password and secret query values.

A configured URL may carry credentials (``https://user:token@host/...``, a pre-signed
``?X-Amz-Signature=...`` or ``?token=...``). The download itself needs them; the logs, raw
manifests, ``uns['scfm']`` provenance and error messages get :func:`redact`'s copy instead.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user[:password]@ -> scheme://***@
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"<>@]+@")
# ?name=value / &name=value whose name looks like a credential (also in requests' messages,
# which quote the path and query without the host)
_PARAM = re.compile(
    r"(?P<lead>[?&;](?:[A-Za-z0-9_.-]*?)"
    r"(?:token|key|secret|passw|pwd|signature|sig|credential|auth|session)[A-Za-z0-9_.-]*=)"
    r"(?P<value>[^&\s'\"<>#]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` without user info and with the values of secret-looking query parameters masked."""
    return _PARAM.sub(rf"\g<lead>{MASK}", _USERINFO.sub(rf"\g<scheme>{MASK}@", url))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (str, dict, list, tuple; others as they are) with every URL redacted."""
    if isinstance(obj, str):
        return redact_url(obj)
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    return obj
