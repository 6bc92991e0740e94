"""Keep credentials in URLs out of everything printed, logged or stored."""

from __future__ import annotations

import re

# scheme://USERINFO@host: USERINFO runs to the last "@" before the host's first "/" (a password may
# hold "@"), and holds no whitespace.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")


def _hide(m: re.Match[str]) -> str:
    userinfo = m["userinfo"]
    if not userinfo:
        return m.group(0)
    user, sep, _ = userinfo.partition(":")
    # user:password keeps the user; a bare token (https://TOKEN@host) is hidden whole.
    return f"{m['scheme']}{user}:***@" if sep and user else f"{m['scheme']}***@"


def redact_url_password(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``, ``scheme://token@host`` and
    ``scheme://:password@host`` -> ``scheme://***@host``: safe to log, print or store."""
    return _USERINFO.sub(_hide, text)
