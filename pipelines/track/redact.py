"""Keep credentials in URIs out of everything printed, logged or stored.

A URI can carry a secret in two places, and both are hidden wherever a URI appears in a text:

* its userinfo: ``http://user:password@host``, ``s3://ACCESS_KEY:SECRET_KEY@bucket/path`` (pyarrow's
  form), ``https://TOKEN@host``. The user (an access key id) is kept, the password replaced by ``***``;
  a bare token or ``:password`` is hidden whole. A secret with an unencoded ``/`` in it (an AWS secret
  key often has one) is still recognised: an ``@`` before the query whose userinfo has ``user:`` before
  its first ``/``;
* its query string or fragment: the value of every parameter whose name looks secret
  (:data:`SECRET_PARAM`: ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``,
  ``AWSAccessKeyId``, ``Signature``, Azure's ``sig``, ``X-Goog-Signature``, pyarrow's ``access_key``,
  ``secret_key`` and ``session_token``, ``token``, ``password``, ``api_key``, ``key``, ...).

:func:`redact_url_password` redacts a text, :func:`redact_value` every string in a JSON-like value,
:func:`strip_secrets` drops the secrets from one URI (for a config that must still load), and
:func:`restore_secrets` puts a known URI's secrets back into a redacted URI that names the same place.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# A URI in a text: scheme:// then everything up to whitespace or a character that ends a quoted or
# marked-up value. A single quote does not end it (a password may hold one); a query value stops there.
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s\"<>`]*)")
# One parameter of a query string or fragment (a token in a fragment: OAuth's #access_token=...).
_PARAM = re.compile(r"(?P<sep>[?&#])(?P<name>[^=&#\s\"'<>`]+)=(?P<value>[^&#\s\"'<>`]*)")
#: Query parameter names whose values are secrets (matched anywhere in the name, any case).
SECRET_PARAM = re.compile(
    r"secret|token|passw|pwd|signature|credential|access_?key|api_?key|private|auth|^sig$|^key$", re.IGNORECASE
)


def _userinfo_end(head: str) -> int:
    """The index of the ``@`` that ends the userinfo of ``head`` (a URI after ``scheme://``, before its
    query), or -1 when it has none."""
    at = head.rfind("@")
    if at <= 0:
        return -1
    userinfo = head[:at]
    slash = userinfo.find("/")
    # "host/path@x" is a path with an "@"; "user:pa/ss@host" a password with an unencoded "/".
    return at if slash < 0 or ":" in userinfo[:slash] else -1


def _split(rest: str) -> tuple[str, str, str]:
    """``rest`` (after ``scheme://``) -> (userinfo, ``@host/path``, ``?query#fragment``)."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    at = _userinfo_end(head)
    return (head[:at], head[at:], tail) if at >= 0 else ("", head, tail)


def _mask_userinfo(userinfo: str) -> str:
    user, sep, _ = userinfo.partition(":")
    # user:password keeps the user; a bare token (https://TOKEN@host) is hidden whole.
    return f"{user}:{REDACTED}" if sep and user else REDACTED


def _params(tail: str, keep_secrets: bool, drop: bool) -> str:
    def one(m: re.Match[str]) -> str:
        if keep_secrets or not m["value"] or not SECRET_PARAM.search(m["name"]):
            return m.group(0)
        return "" if drop else f"{m['sep']}{m['name']}={REDACTED}"

    out = _PARAM.sub(one, tail)
    if drop and out.startswith("&"):  # the first parameter left out took its "?" (or "#") with it
        out = tail[0] + out[1:]
    return out


def _redact(m: re.Match[str]) -> str:
    userinfo, host, tail = _split(m["rest"])
    if userinfo:
        host = _mask_userinfo(userinfo) + host
    return m["scheme"] + host + _params(tail, keep_secrets=False, drop=False)


def redact_url_password(text: str) -> str:
    """``text`` with the secrets of every URI in it hidden: ``scheme://user:password@host`` ->
    ``scheme://user:***@host``, ``scheme://token@host`` and ``scheme://:password@host`` ->
    ``scheme://***@host``, ``?X-Amz-Signature=...`` -> ``?X-Amz-Signature=***``. Safe to log, print or
    store; a text without such a URI comes back unchanged."""
    return _URI.sub(_redact, text)


def redact_value(value: Any) -> Any:
    """``value`` (a config, a summary, a table row: dicts, lists, strings, numbers) with every string in
    it passed through :func:`redact_url_password`; keys and other values are kept."""
    if isinstance(value, str):
        return redact_url_password(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def strip_secrets(value: Any) -> Any:
    """``value`` (a URI, or a JSON-like value holding some) with every URI's userinfo and secret query
    parameters left out: ``s3://KEY:SECRET@bucket/r`` -> ``s3://bucket/r``, a valid URI for the same
    place that reads its credentials from elsewhere (the environment, an instance role)."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(strip_secrets(v) for v in value)
    if not isinstance(value, str):
        return value

    def strip(m: re.Match[str]) -> str:
        _, host, tail = _split(m["rest"])
        return m["scheme"] + host.removeprefix("@") + _params(tail, keep_secrets=False, drop=True)

    return _URI.sub(strip, value)


def _query_values(tail: str) -> dict[str, str]:
    return {m["name"]: m["value"] for m in _PARAM.finditer(tail)}


def restore_secrets(uri: str, source: str) -> str:
    """``uri`` as :func:`redact_url_password` left it, with the secrets of ``source`` put back, when both
    name the same store: same scheme, and the same userinfo and host once ``source`` is redacted. Used to
    open a checkpoint whose URI was written redacted (a summary, a tag) with the credentials of the
    config's ``checkpoint.storage_path``. Anything else comes back unchanged."""
    m, s = _URI.fullmatch(uri), _URI.fullmatch(source)
    if m is None or s is None or m["scheme"].lower() != s["scheme"].lower() or REDACTED not in uri:
        return uri
    m_user, m_host, m_tail = _split(m["rest"])
    s_user, s_host, s_tail = _split(s["rest"])
    if m_host.lstrip("@").split("/", 1)[0] != s_host.lstrip("@").split("/", 1)[0]:
        return uri
    if s_user and m_user == _mask_userinfo(s_user):
        m_user = s_user
    known = _query_values(s_tail)

    def put_back(p: re.Match[str]) -> str:
        if p["value"] == REDACTED and p["name"] in known:
            return f"{p['sep']}{p['name']}={known[p['name']]}"
        return p.group(0)

    return m["scheme"] + (m_user + m_host if m_user else m_host) + _PARAM.sub(put_back, m_tail)
