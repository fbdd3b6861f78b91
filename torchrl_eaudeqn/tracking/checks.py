"""Checks of a run's MLflow inputs that need no MLflow: the tracking URI and the names.

:func:`check_tracking_uri` opens nothing: it checks that a local store's
folder or SQLite file can be written (or, for a remote server, that it answers
within :data:`REACHABILITY_TIMEOUT_S`); :func:`check_names` applies MLflow's
rules for experiment names, run tags and registered-model names and aliases,
mirrored here so that a typo fails before MLflow is imported (seconds);
:func:`check_names_with_mlflow` then runs MLflow's own validators. Every
failure is one line naming the field. :mod:`torchrl_eaudeqn.validation`
calls them in its order and re-exports them.

Example:
    >>> try:
    ...     check_alias("best@v2")
    ... except ConfigError as err:
    ...     print(err)
    register_alias: expected letters, digits, '_' or '-' (at most 255), got 'best@v2'
"""

from __future__ import annotations

import os
import posixpath
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..credentials import redact_uri

__all__ = [
    "BUILTIN_ALIASES",
    "MODELS_URI_RE",
    "REACHABILITY_TIMEOUT_S",
    "check_alias",
    "check_model_name",
    "check_names",
    "check_names_with_mlflow",
    "check_registered_names",
    "check_tracking_uri",
]

#: Seconds allowed to reach a remote tracking server before giving up.
REACHABILITY_TIMEOUT_S = 3.0

# MLflow's rules (mlflow.utils.validation), mirrored so that they hold without
# importing MLflow (3 s); check_names_with_mlflow() runs MLflow's own as well.
_ALIAS_RE = re.compile(r"^[\w\-]+$")
_VERSION_ALIAS_RE = re.compile(r"^[vV]\d+$")
_TAG_KEY_RE = re.compile(r"^[/\w.\- :]*$")
_MAX_ALIAS = 255
_MAX_EXPERIMENT = 500
_MAX_TAG_KEY = 250
_MAX_TAG_VALUE = 8000
#: A registry URI, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
MODELS_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
#: Aliases MLflow resolves itself and refuses to set ("@latest" is the highest version).
BUILTIN_ALIASES = ("latest",)


# --------------------------------------------------------------------------- tracking URI
def _check_local_dir(uri: str, path: Path, what: str, must_exist: bool) -> None:
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r}: {what} {path} is not a directory"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r}: {what} {path} is not writable"
            )
        return
    if must_exist:
        raise ValueError(f"MLflow tracking URI {redact_uri(uri)!r}: no MLflow store at {path}")
    # MLflow creates the store directory (and its parents) itself: the nearest
    # existing ancestor is what must be writable.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"MLflow tracking URI {redact_uri(uri)!r}: cannot create {path} ({parent} is not "
            "writable)"
        )


def _check_socket(uri: str, host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise ValueError(
            f"MLflow tracking URI {redact_uri(uri)!r} is not reachable ({host}:{port}: "
            f"{err.strerror or type(err).__name__}, timeout {timeout:g} s)"
        ) from None


def check_tracking_uri(
    uri: str, *, must_exist: bool = False, timeout: float = REACHABILITY_TIMEOUT_S
) -> None:
    """Fail fast, with a one-line ``ValueError``, when a tracking URI cannot work.

    MLflow itself retries an unreachable server for minutes; this check takes
    at most ``timeout`` seconds, so call it before training or logging.

    * ``sqlite:///path``: the database's directory must exist and be writable
      (with ``must_exist``, the database file must exist);
    * ``file:`` URIs and plain paths: the directory, or its nearest existing
      ancestor, must be writable;
    * ``http(s)://``: a GET of ``<uri>/health`` must get an HTTP answer (any
      status: a 401 or 404 still proves a server is there);
    * other database URIs (``postgresql://``, ``mysql://``, ...): a TCP
      connection to the host and port must open;
    * anything else (``databricks``, ...) is left to MLflow.

    Args:
        uri: an MLflow tracking URI.
        must_exist: require an existing local store (for loading: do not
            create an empty ``mlflow.db`` by looking up a model).
        timeout: seconds for network checks.

    Raises:
        ValueError: the URI is malformed, unreachable or not writable.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     check_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        >>> try:
        ...     check_tracking_uri("sqlite:////no/such/dir/x.db")
        ... except ValueError as err:
        ...     print(err)
        MLflow tracking URI 'sqlite:////no/such/dir/x.db': directory /no/such/dir does not exist
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"MLflow tracking URI must be a non-empty str, got {redact_uri(uri)!r}")
    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc", "uc"):
        return  # profile-based: MLflow resolves and authenticates these itself
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        if uri.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://") or ":memory:" in uri:
            return  # in-memory database
        if not uri.startswith("sqlite:///"):
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r}: expected sqlite:///<path to .db file>"
            )
        db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        directory = db.parent if str(db.parent) else Path(".")
        if not directory.is_dir():
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r}: directory {directory} does not exist"
            )
        if db.exists():
            if not db.is_file() or not os.access(db, os.R_OK | os.W_OK):
                raise ValueError(
                    f"MLflow tracking URI {redact_uri(uri)!r}: {db} is not a writable file"
                )
        elif must_exist:
            raise ValueError(f"MLflow tracking URI {redact_uri(uri)!r}: no MLflow database at {db}")
        # SQLite writes a journal beside the database: the directory must be writable.
        elif not os.access(directory, os.W_OK | os.X_OK):
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r}: directory {directory} is not writable"
            )
        return
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):
        path = Path(urllib.request.url2pathname(parsed.path) if scheme == "file" else uri)
        _check_local_dir(uri, path, "directory", must_exist)
        return
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise ValueError(f"MLflow tracking URI {redact_uri(uri)!r} has no host")
        # Without user info: urllib would take "user:pass@host" for the host name,
        # and any HTTP answer (a 401 too) proves the server is there.
        bare = parsed._replace(netloc=parsed.netloc.rpartition("@")[2], query="", fragment="")
        url = urllib.parse.urlunparse(bare).rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - http(s) only
                pass
        except urllib.error.HTTPError:
            return  # an HTTP status, even an error one, means a server answered
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            reason = getattr(reason, "strerror", None) or str(reason) or type(err).__name__
            raise ValueError(
                f"MLflow tracking URI {redact_uri(uri)!r} is not reachable ({reason}; "
                f"GET {redact_uri(url)} failed within {timeout:g} s)"
            ) from None
        return
    db_ports = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
    base = scheme.split("+", 1)[0]
    if base in db_ports:
        if not parsed.hostname:
            raise ValueError(f"MLflow tracking URI {redact_uri(uri)!r} has no host")
        _check_socket(uri, parsed.hostname, parsed.port or db_ports[base], timeout)


# --------------------------------------------------------------------------- names
def _path_not_unique(name: str) -> bool:
    # MLflow's path_not_unique: a name that a file path would turn into another one.
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def check_model_name(name: object, field: str = "register_name") -> str:
    """A registered-model name MLflow accepts and ``models:/NAME@ALIAS`` can name.

    Raises:
        ConfigError: empty, with ``/``, ``:`` or ``@``, or a path that
            normalises to another name (one line naming ``field``).

    Example:
        >>> check_model_name("eaudeqn-Pong-dqn-small")
        'eaudeqn-Pong-dqn-small'
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{field}: expected a non-empty registered-model name, got {name!r}")
    bad = [c for c in "/:@" if c in name]
    if bad:
        raise ConfigError(
            f"{field}: a registered-model name cannot contain {' or '.join(map(repr, bad))} "
            f"(MLflow and models:/NAME@ALIAS URIs), got {name!r}"
        )
    if _path_not_unique(name) or name != name.strip():
        raise ConfigError(
            f"{field}: a registered-model name must not change as a file path (no leading or "
            f"trailing spaces, '.' or '..' parts), got {name!r}"
        )
    return name


def check_alias(alias: object, field: str = "register_alias") -> str:
    """A model-version alias MLflow lets us set (``latest`` is resolved by MLflow itself).

    Raises:
        ConfigError: empty, characters other than letters, digits, ``_``,
            ``-``, longer than 255, or ``v<number>`` (reserved for versions).

    Example:
        >>> check_alias("final"), check_alias("latest")
        ('final', 'latest')
    """
    if not isinstance(alias, str) or not alias:
        raise ConfigError(f"{field}: expected a non-empty alias, got {alias!r}")
    if not _ALIAS_RE.match(alias) or len(alias) > _MAX_ALIAS:
        raise ConfigError(
            f"{field}: expected letters, digits, '_' or '-' (at most {_MAX_ALIAS}), got {alias!r}"
        )
    if _VERSION_ALIAS_RE.match(alias):
        raise ConfigError(
            f"{field}: aliases v<number> are reserved by MLflow for version numbers, got {alias!r}"
        )
    return alias


def _registered_names(cfg: Any) -> list[str]:
    """The registered-model names a run writes (``register_format=both``: two)."""
    if getattr(cfg, "register_format", "dense") == "both":
        return [cfg.model_name, cfg.model_name + "-compact"]
    return [cfg.model_name]


def _run_tags(cfg: Any) -> list[tuple[str, str]]:
    return [
        (key.strip(), value.strip())
        for key, _, value in (item.partition("=") for item in filter(None, cfg.run_tags.split(",")))
    ]


def check_names(cfg: Any) -> None:
    """The experiment, run tags, registered-model name and alias of ``cfg``, by MLflow's rules.

    A default registered-model name is built from the task (``game``,
    ``env``, ``task``): a task id with ``/`` needs ``register_name``.

    Raises:
        ConfigError: one line naming the field.

    Example:
        >>> from torchrl_eaudeqn.config import SACConfig
        >>> try:
        ...     check_registered_names(SACConfig(env="dm_control/cartpole-balance-v0"))
        ... except ConfigError as err:
        ...     print(str(err)[:60])
        register_name: the default name 'eaudesac-dm_control/cartpol
    """
    if len(cfg.experiment) > _MAX_EXPERIMENT:
        raise ConfigError(
            f"experiment: at most {_MAX_EXPERIMENT} characters (MLflow), got {len(cfg.experiment)}"
        )
    for key, value in _run_tags(cfg):
        if not key or not _TAG_KEY_RE.match(key) or _path_not_unique(key):
            raise ConfigError(
                f"run_tags: tag key {key!r}: expected letters, digits, '_', '-', '.', ' ', ':' "
                "or '/' that stay the same as a file path (MLflow's tag names)"
            )
        if len(key) > _MAX_TAG_KEY or len(value) > _MAX_TAG_VALUE:
            raise ConfigError(
                f"run_tags: tag {key[:50]!r}: keys at most {_MAX_TAG_KEY} characters, values "
                f"at most {_MAX_TAG_VALUE} (MLflow)"
            )
    if not getattr(cfg, "register", True):
        return
    if cfg.register_name:
        check_registered_names(cfg)
    check_alias(cfg.register_alias)


def check_registered_names(cfg: Any) -> None:
    """The registered-model names the run writes, the default one included.

    A default name is built from the task (``game``, ``env``, ``task``), so
    :func:`load_run_config` checks it after the task: a wrong recipe for the
    task (``env=ALE/Pong-v5``) is the error to report, not the name.

    Raises:
        ConfigError: one line naming ``register_name``.
    """
    if not getattr(cfg, "register", True):
        return
    for name in _registered_names(cfg):
        try:
            check_model_name(name)
        except ConfigError as err:
            if cfg.register_name:
                raise
            raise ConfigError(
                f"register_name: the default name {name!r} "
                f"(from env={cfg.env!r}) "
                f"is not a valid registered-model name ({str(err).split(': ', 1)[1]}); "
                "set register_name"
            ) from None


def mlflow_alias_rules() -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    """MLflow's own alias checks (format, reserved names), under either of their names.

    Private functions: MLflow 3.18 renamed ``_validate_model_alias_name`` and
    ``_validate_model_alias_name_reserved`` to ``_validate_alias_name`` and
    ``_validate_alias_name_reserved``.

    Raises:
        AttributeError: this MLflow has neither name.
    """
    from mlflow.utils import validation as v

    def rule(*names: str) -> Callable[[str], Any]:
        for name in names:
            if (fn := getattr(v, name, None)) is not None:
                return fn
        raise AttributeError(f"mlflow.utils.validation has none of {names}")

    return (
        rule("_validate_model_alias_name", "_validate_alias_name"),
        rule("_validate_model_alias_name_reserved", "_validate_alias_name_reserved"),
    )


def check_names_with_mlflow(cfg: Any) -> None:
    """MLflow's own validators on the names of ``cfg`` (after :func:`check_names`).

    Imports MLflow (seconds), so it runs last, once everything cheap has
    passed. Its validators are private functions: if a future MLflow moves
    them, this check is skipped and :func:`check_names` stands alone.

    Raises:
        ConfigError: MLflow refuses a name (one line naming the field).
    """
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.utils import validation as v

        checks: list[tuple[str, Callable[[], Any]]] = [
            ("experiment", lambda: v._validate_experiment_name(cfg.experiment)),
            *[("run_tags", lambda k=k: v._validate_tag_name(k)) for k, _ in _run_tags(cfg)],
        ]
        if getattr(cfg, "register", True):
            alias = cfg.register_alias
            alias_rule, reserved_rule = mlflow_alias_rules()
            checks += [("register_name", lambda n=n: v._validate_model_name(n))
                       for n in _registered_names(cfg)]  # fmt: skip
            checks.append(("register_alias", lambda: alias_rule(alias)))
            if alias.lower() not in BUILTIN_ALIASES:
                checks.append(("register_alias", lambda: reserved_rule(alias)))
    except (ImportError, AttributeError):  # pragma: no cover - depends on the MLflow version
        return
    for name, check in checks:
        try:
            check()
        except MlflowException as err:
            raise ConfigError(f"{name}: {err.message} (MLflow)") from None
