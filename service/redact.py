"""Secrets stay in the process: credentials in URLs (``DIR_QUEUE=redis://user:password@host``) are
redacted from every response body and every log line.

:class:`Redactor` rewrites text: the user-info part of any URL (``scheme://user:password@``) becomes
``scheme://***@``, secret query parameters (``?password=...``) become ``***``, and the known secret strings
(the password of ``DIR_QUEUE``) are replaced wherever they appear. The app applies it to every error body
and to ``/readyz``; :func:`install_log_redaction` puts it on every log handler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
#: Shorter secrets are not replaced inside free text (they would mangle ordinary words); URLs holding
#: them are still redacted by their structure.
MIN_SECRET_CHARS = 4
SECRET_PARAMS = ("password", "passwd", "pass", "pwd", "token", "secret", "auth")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]+@")
_PARAM = re.compile(rf"(?P<key>[?&;](?:{'|'.join(SECRET_PARAMS)})=)[^&;\s]+", re.IGNORECASE)
#: Loggers whose records are formatted from their ``args`` tuple (uvicorn's access log); they carry what the
#: client sent, never a server secret, and must keep their ``args``.
ARGS_FORMATTED = ("uvicorn.access",)


def url_secrets(url: str) -> list[str]:
    """The secret strings of ``url``: its password (as written and percent-decoded) and the values of secret
    query parameters."""
    parts = urlsplit(url)
    found: list[str] = []
    _, colon, password = parts.netloc.rpartition("@")[0].partition(":")
    if colon and password:
        found += [password, unquote(password)]
    found += [value for key, value in parse_qsl(parts.query) if key.lower() in SECRET_PARAMS and value]
    return found


class Redactor:
    """Callable text -> text with every credential masked (see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        self.secrets = sorted(unique, key=len, reverse=True)

    @classmethod
    def for_urls(cls, *urls: str) -> Redactor:
        """A redactor that also knows the secrets of ``urls`` (e.g. ``settings.queue``)."""
        return cls(s for url in urls for s in url_secrets(url))

    def __call__(self, text: str) -> str:
        text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
        text = _PARAM.sub(rf"\g<key>{MASK}", text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def redact_url(url: str) -> str:
    """``url`` with its user-info and secret query parameters masked: ``redis://***@host:6379/0``."""
    return Redactor.for_urls(url)(url)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message, traceback and stack text before formatting."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        if record.name not in ARGS_FORMATTED:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install_log_redaction(redact: Callable[[str], str]) -> Callable[[], None]:
    """Put a :class:`RedactingFilter` on every handler configured now (the root logger's and every named
    logger's, e.g. uvicorn's); returns the function that removes them again."""
    log_filter = RedactingFilter(redact)
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    handlers = {id(h): h for logger in loggers for h in logger.handlers}.values()
    for handler in handlers:
        handler.addFilter(log_filter)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(log_filter)

    return remove
