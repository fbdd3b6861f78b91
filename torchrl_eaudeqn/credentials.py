"""Keep tracking-URI credentials out of everything the project writes or prints.

A tracking URI may carry a secret: ``https://alice:PASSWORD@mlflow.example``,
``postgresql://mlflow:PASSWORD@db/mlflow`` or a token in the query string.
Wherever this package writes or prints a URI (MLflow params and tags, the
config saved in a checkpoint, log and error lines) it goes through
:func:`redact_uri` or :func:`redact_text` first, and a run spawned by the
study runner gets a credentialed URI through its environment
(``tracking_uri=env:MLFLOW_TRACKING_URI``, :func:`resolve_env_uri`), never on
its command line. The better way is not to put secrets in the URI at all:
MLflow reads ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN`` from the environment (docs/security.md).

Example:
    >>> redact_uri("https://alice:s3cret@mlflow.example:5000/")
    'https://***@mlflow.example:5000/'
    >>> redact_text("GET https://alice:s3cret@mlflow.example/health failed")
    'GET https://***@mlflow.example/health failed'
    >>> redact_uri("postgresql://db:5432/mlflow?password=s3cret&sslmode=require")
    'postgresql://db:5432/mlflow?password=***&sslmode=require'
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "has_credentials",
    "hide_run_urls",
    "redact_text",
    "redact_uri",
    "redacted_config",
    "resolve_env_uri",
]

#: ``tracking_uri=env:NAME`` reads the URI from environment variable ``NAME``.
ENV_PREFIX = "env:"
_MASK = "***"
# Query parameters whose value is a secret (tokens, passwords, signed-URL signatures).
_SECRET_PARAM = re.compile(
    r"(?i)^(.*token.*|.*passw(or)?d.*|pwd|.*secret.*|.*api[_-]?key.*|access[_-]?key|"
    r"auth|authorization|credentials?|sig|signature|x-amz-signature|x-amz-credential)$"
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _split(uri: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(uri)
    except ValueError:
        return None


def has_credentials(uri: object) -> bool:
    """Whether ``uri`` carries a user, a password or a secret query parameter.

    Example:
        >>> has_credentials("http://u:p@h:5000"), has_credentials("sqlite:///mlflow.db")
        (True, False)
    """
    return isinstance(uri, str) and redact_uri(uri) != uri


def redact_uri(uri: str) -> str:
    """``uri`` with its user info and secret query values replaced by ``***``.

    The user name goes too: a token is often passed as the user
    (``https://TOKEN@host``). Anything that does not parse as a URI with a
    ``scheme://`` is returned unchanged (a plain path has no secret).

    Example:
        >>> redact_uri("http://token@127.0.0.1:5000"), redact_uri("sqlite:///x.db")
        ('http://***@127.0.0.1:5000', 'sqlite:///x.db')
    """
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    parts = _split(uri)
    if parts is None:
        return _URL_IN_TEXT.sub(_MASK, uri)  # unparsable: hide it all
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = []
        for item in query.split("&"):
            key, eq, _ = item.partition("=")
            secret = eq and _SECRET_PARAM.match(urllib.parse.unquote_plus(key))
            pairs.append(f"{key}={_MASK}" if secret else item)
        query = "&".join(pairs)
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """Every URI inside ``text`` (an error message, a log line) passed through :func:`redact_uri`.

    Example:
        >>> redact_text("cannot reach 'http://u:p@h/api' (refused)")
        "cannot reach 'http://***@h/api' (refused)"
    """
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def redacted_config(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict(cfg)`` with every string value through :func:`redact_text`.

    What a checkpoint and the MLflow params get: the run's config without
    its secrets (``tracking_uri`` may change on resume, so nothing needs them).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     tracking_uri: str = "https://u:p@h"
        ...     lr: float = 0.1
        >>> redacted_config(C())
        {'tracking_uri': 'https://***@h', 'lr': 0.1}
    """
    import dataclasses

    data = dataclasses.asdict(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    return {k: redact_text(v) if isinstance(v, str) else v for k, v in data.items()}


def resolve_env_uri(uri: str, what: str = "tracking_uri") -> str:
    """``env:NAME`` -> the value of environment variable ``NAME``; anything else unchanged.

    Raises:
        ValueError: ``NAME`` is not set or empty (one line naming ``what``).

    Example:
        >>> os.environ["EXAMPLE_URI"] = "http://127.0.0.1:5000"
        >>> resolve_env_uri("env:EXAMPLE_URI"), resolve_env_uri("sqlite:///x.db")
        ('http://127.0.0.1:5000', 'sqlite:///x.db')
    """
    if not isinstance(uri, str) or not uri.startswith(ENV_PREFIX):
        return uri
    name = uri[len(ENV_PREFIX) :]
    value = os.environ.get(name, "") if name else ""
    if not value:
        raise ValueError(f"{what}: {uri!r} names environment variable {name!r}, which is not set")
    return value


def hide_run_urls(uri: str) -> None:
    """Stop MLflow printing run URLs (``View run ... at: <uri>/#/...``) when ``uri`` has secrets.

    MLflow builds those lines from the tracking URI as given, credentials
    included; ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` turns them off for
    this process and the runs it starts.

    Example:
        >>> hide_run_urls("sqlite:///mlflow.db")  # nothing to hide: nothing changes
    """
    if has_credentials(uri):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
