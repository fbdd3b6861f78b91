"""Checks on a run's input before anything is built: one line naming the field, exit status 2.

:func:`parse_args` is the command line of ``recipes/atari_dqn.py``,
``recipes/mujoco_sac.py`` and ``recipes/control_dqn.py``. It reads the
config (:func:`~torchrl_eaudeqn.config.load_config`: types, bounds, finite
floats, non-empty names), then checks what no single field shows, in this
order, before any env, MLflow run or checkpoint folder exists:

1. :func:`check_budget`: a batch larger than the replay, learning that never
   starts within ``env_steps``, seeds whose offsets leave NumPy's range;
2. :func:`check_names`: the MLflow experiment, run tags, registered-model
   name and alias, by MLflow's rules;
3. the tracking URI (:func:`check_tracking_uri`) and ``device=cuda``;
4. the recipe's task (:func:`check_atari`, :func:`check_sac`,
   :func:`check_control`): the game or env id, and the replay's memory need
   against the memory available (:func:`check_replay_memory`);
5. MLflow's own validators of the names (:func:`check_names_with_mlflow`).

Steps 1-3 need neither torch nor MLflow (about 0.1 s), step 4 Gymnasium and
ALE, so a typo fails in well under a second or two; a config that passes
everything then imports MLflow for step 5, which it needs anyway.

Example:
    >>> from torchrl_eaudeqn.config import ConfigError, ControlConfig
    >>> try:
    ...     check_budget(ControlConfig(batch_size=128, buffer_size=100))
    ... except ConfigError as err:
    ...     print(err)
    batch_size: must be <= buffer_size (100): the replay never holds a batch, got 128
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import posixpath
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import (
    EVAL_SEED_OFFSET,
    SEED_MAX,
    AtariConfig,
    ConfigError,
    ControlConfig,
    SACConfig,
    load_config,
)
from .credentials import ENV_PREFIX, hide_run_urls, redact_text, redact_uri, resolve_env_uri

__all__ = [
    "MEMORY_WARN_FRACTION",
    "MODELS_URI_RE",
    "REACHABILITY_TIMEOUT_S",
    "RECIPE_CHECKS",
    "OneLineParser",
    "available_memory",
    "check_alias",
    "check_atari",
    "check_budget",
    "check_control",
    "check_device",
    "check_model_name",
    "check_names",
    "check_names_with_mlflow",
    "check_registered_names",
    "check_replay_memory",
    "check_sac",
    "check_tracking_uri",
    "frame_replay_layout",
    "load_run_config",
    "parse_args",
    "replay_bytes",
]

C = TypeVar("C")

#: Seconds allowed to reach a remote tracking server before giving up.
REACHABILITY_TIMEOUT_S = 3.0
#: A replay needing more than this fraction of the available memory gets a warning.
MEMORY_WARN_FRACTION = 0.7

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


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``error: ...``), exit status 2.

    Example:
        >>> p = OneLineParser(prog="x")
        >>> _ = p.add_argument("--n", type=int)
        >>> try:
        ...     p.parse_args(["--n", "two"])
        ... except SystemExit as err:
        ...     err.code
        2
    """

    #: Printed before ``error:`` (``"evaluate.py: "``: the script's name).
    prefix = ""

    def error(self, message: str):  # type: ignore[override]  # no usage block
        self.exit(2, f"{self.prefix}error: {message}\n")


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
                f"(from {cfg.TASK_FIELD}={cfg.task_id!r}) "
                f"is not a valid registered-model name ({str(err).split(': ', 1)[1]}); "
                "set register_name"
            ) from None


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
            checks += [("register_name", lambda n=n: v._validate_model_name(n))
                       for n in _registered_names(cfg)]  # fmt: skip
            checks.append(("register_alias", lambda: v._validate_model_alias_name(alias)))
            if alias.lower() not in BUILTIN_ALIASES:
                checks.append(
                    ("register_alias", lambda: v._validate_model_alias_name_reserved(alias))
                )
    except (ImportError, AttributeError):  # pragma: no cover - depends on the MLflow version
        return
    for name, check in checks:
        try:
            check()
        except MlflowException as err:
            raise ConfigError(f"{name}: {err.message} (MLflow)") from None


# --------------------------------------------------------------------------- budget
def replay_capacity(cfg: Any) -> int:
    """Transitions the replay can hold: Atari's frame replay splits the capacity per env."""
    if isinstance(cfg, AtariConfig):
        return cfg.num_envs * (cfg.buffer_size // cfg.num_envs)
    return cfg.buffer_size


def seed_offset(cfg: Any) -> int:
    """The largest number a recipe adds to ``cfg.seed``.

    The training env of a (re)start gets ``seed + env step`` (its env ``i``
    ``+ i``), the evaluation env ``seed + EVAL_SEED_OFFSET``, the actor's
    speed policy ``seed + 1`` (``torchrl_eaudeqn/lightning.py``).

    Example:
        >>> seed_offset(AtariConfig(env_steps=10_000_000, num_envs=4, train_freq=4))
        10000020
    """
    # A (re)start may come at the end of the budget, overshot by one collection.
    envs = getattr(cfg, "num_envs", 1)
    return max(EVAL_SEED_OFFSET, cfg.env_steps + (cfg.train_freq + 1) * envs)


def check_budget(cfg: Any) -> None:
    """Combinations of fields that cannot train: the batch, the start of learning, the seeds.

    Learning starts once ``env_steps >= learning_starts`` and the replay
    holds ``max(batch_size, min(learning_starts, buffer_size))`` transitions
    (``OnlineRLModule._learning``), so the first gradient step is at env
    step ``max(learning_starts, batch_size)``, which must not come after the
    end of the budget (at the end exactly: one gradient step).

    Raises:
        ConfigError: one line naming the field.
    """
    cap = replay_capacity(cfg)
    if isinstance(cfg, AtariConfig) and cfg.buffer_size // cfg.num_envs < 5:
        raise ConfigError(
            f"buffer_size: must hold at least 5 frames per env (4 stacked + 1) with "
            f"num_envs={cfg.num_envs}, got {cfg.buffer_size}"
        )
    if cfg.batch_size > cap:
        what = "buffer_size" if cap == cfg.buffer_size else f"the replay's {cap} slots"
        detail = f" ({cap})" if cap == cfg.buffer_size else ""
        raise ConfigError(
            f"batch_size: must be <= {what}{detail}: the replay never holds a batch, "
            f"got {cfg.batch_size}"
        )
    warm = max(cfg.batch_size, min(cfg.learning_starts, cfg.buffer_size))
    if warm > cap:
        raise ConfigError(
            f"buffer_size: {cfg.buffer_size} is not a multiple of num_envs={cfg.num_envs}; the "
            f"replay holds {cap} transitions and never reaches learning_starts"
        )
    if cfg.learning_starts > cfg.env_steps:
        raise ConfigError(
            f"learning_starts: must be <= env_steps ({cfg.env_steps}): learning would never "
            f"start, got {cfg.learning_starts}"
        )
    if cfg.batch_size > cfg.env_steps:
        raise ConfigError(
            f"batch_size: the first gradient step needs {cfg.batch_size} transitions, more than "
            f"env_steps ({cfg.env_steps}): learning would never start"
        )
    offset = seed_offset(cfg)
    if cfg.seed + offset > SEED_MAX:
        raise ConfigError(
            f"seed: must be <= {SEED_MAX - offset} (seeds are 0..2**32-1 and the run adds up "
            f"to {offset}: the env step, the evaluation env's offset), got {cfg.seed}"
        )


def check_device(cfg: Any) -> None:
    """``device=cuda`` needs a CUDA device that torch can use (imports torch only then).

    Raises:
        ConfigError: no CUDA device (one line).
    """
    if cfg.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        raise ConfigError(
            f"device: cuda requested, but torch finds no CUDA device (torch {torch.__version__}, "
            f"{build}); use device=cpu or device=auto"
        )


# --------------------------------------------------------------------------- memory
_ITEMSIZE = {"uint8": 1, "bool": 1, "int32": 4, "float32": 4, "int64": 8, "float64": 8}


def frame_replay_layout(
    capacity: int, frame_shape: Sequence[int], stack: int, num_streams: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays of a :class:`~torchrl_eaudeqn.replay.FrameReplayBuffer`: name -> (shape, dtype).

    The buffer allocates exactly these (it reads them from here), so its
    memory need is known before torch or NumPy is imported.

    Example:
        >>> layout = frame_replay_layout(1000, (84, 84), 4, 1)
        >>> layout["frames"], layout["action"]
        (((1001, 84, 84), 'uint8'), ((1000,), 'int32'))
    """
    n = num_streams * (capacity // num_streams)
    return {
        # One extra all-zero frame at index n serves zero padding as a plain gather.
        "frames": ((n + 1, *frame_shape), "uint8"),
        "action": ((n,), "int32"),
        "reward": ((n,), "float32"),
        "terminated": ((n,), "bool"),
        "truncated": ((n,), "bool"),
        "valid": ((n,), "bool"),
        "hist": ((n,), "uint8" if stack <= 256 else "int32"),
    }


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * _ITEMSIZE[dtype]


def replay_bytes(cfg: Any, spaces: dict[str, Any] | None = None) -> int:
    """Bytes the recipe's replay holds once full.

    * Atari: :func:`frame_replay_layout` (each 84x84 frame once, 12 bytes of
      bookkeeping a slot);
    * SAC and control: TorchRL's ``LazyTensorStorage`` keeps, per
      transition, what the module's ``REPLAY_KEYS`` select: observation and
      next observation (float32 for SAC, whose env casts with
      ``DoubleToFloat``; the task's dtype for control, float32 for MinAtar),
      the action (SAC: float32 vector; control: one-hot int64), the reward
      (float32) and 2 (control) or 3 (SAC) bool flags.

    Args:
        cfg: the config.
        spaces: for SAC and control, ``{"obs_numel", "obs_itemsize",
            "action_numel"}`` of the task (:func:`task_spaces`).
    """
    if isinstance(cfg, AtariConfig):
        layout = frame_replay_layout(cfg.buffer_size, (84, 84), 4, cfg.num_envs)
        return sum(_nbytes(shape, dtype) for shape, dtype in layout.values())
    assert spaces is not None
    obs = spaces["obs_numel"] * spaces["obs_itemsize"]
    if isinstance(cfg, SACConfig):
        per = 2 * obs + 4 * spaces["action_numel"] + 4 + 3
    else:
        per = 2 * obs + 8 * spaces["action_numel"] + 4 + 2
    return cfg.buffer_size * per


def available_memory() -> int | None:
    """Bytes of memory a new process can use now (``None`` where unknown).

    ``MemAvailable`` of ``/proc/meminfo`` (``psutil`` elsewhere), capped by
    the cgroup's limit minus its use (a container or a Ray worker's limit).
    """
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except Exception:  # noqa: BLE001 - psutil missing or unsupported here
            pass
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (f"{v1}limit_in_bytes", f"{v1}usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def check_replay_memory(
    cfg: Any, need: int, *, available: int | None = None, warn: Callable[[str], None] | None = None
) -> None:
    """Refuse a replay larger than the available memory; warn above 70% of it.

    A replay fills as the run goes: one that cannot fit is killed hours in.

    Args:
        cfg: the config (its ``buffer_size`` is named).
        need: bytes the full replay holds (:func:`replay_bytes`).
        available: bytes available (default: :func:`available_memory`).
        warn: where the warning line goes (default: stderr).

    Raises:
        ConfigError: ``need`` exceeds ``available``.

    Example:
        >>> cfg = ControlConfig(buffer_size=50_000)
        >>> check_replay_memory(cfg, 8 * 10**9, available=10 * 10**9, warn=lambda s: print(s[-43:]))
        80% of the 10.00 GB of memory available now
    """
    available = available_memory() if available is None else available
    if available is None or need <= 0:
        return
    what = (
        f"{_gb(need)} when full ({cfg.buffer_size} transitions x "
        f"{need // max(cfg.buffer_size, 1)} bytes)"
    )
    if need > available:
        raise ConfigError(
            f"buffer_size: the replay would hold {what}, more than the {_gb(available)} of "
            f"memory available; lower buffer_size (got {cfg.buffer_size})"
        )
    if need > MEMORY_WARN_FRACTION * available:
        line = (
            f"warning: buffer_size: the replay will hold {what}, {need / available:.0%} of the "
            f"{_gb(available)} of memory available now"
        )
        (warn or (lambda text: print(text, file=sys.stderr)))(line)


# --------------------------------------------------------------------------- tasks
def _gym_spaces(env_id: str, minatar: bool) -> tuple[Any, Any]:
    import gymnasium as gym

    from .tasks import probe_spaces

    if minatar and env_id not in gym.registry:
        from minatar.gym import register_envs

        register_envs()
    return probe_spaces(env_id)


def task_spaces(cfg: Any) -> dict[str, Any]:
    """What the replay stores of the task's spaces: observation size and dtype, action size.

    Builds the bare Gymnasium env once (MinAtar: imports the ``minatar``
    package, a few seconds), as the recipes' own env checks do.

    Example:
        >>> task_spaces(ControlConfig(task="CartPole-v1"))
        {'obs_numel': 4, 'obs_itemsize': 4, 'action_numel': 2, 'action_space': 'Discrete'}
    """
    import gymnasium as gym

    minatar = isinstance(cfg, ControlConfig) and cfg.task.startswith("minatar:")
    if minatar:
        env_id = f"MinAtar/{cfg.task_name.title().replace('_', '')}-v1"
    else:
        env_id = cfg.task_id
    obs, act = _gym_spaces(env_id, minatar)
    if not isinstance(obs, gym.spaces.Box):
        raise ConfigError(
            f"{cfg.TASK_FIELD}: {env_id!r} has a {type(obs).__name__} observation space; "
            "the networks read a flat or image Box"
        )
    # MinAtar: bool [10, 10, C] -> float32 [C, 10, 10] (control.make_minatar_env);
    # SAC: DoubleToFloat (envs.make_continuous_env); control: the task's dtype.
    itemsize = 4 if minatar or isinstance(cfg, SACConfig) else obs.dtype.itemsize
    discrete = isinstance(act, gym.spaces.Discrete)
    return {
        "obs_numel": math.prod(obs.shape),
        "obs_itemsize": itemsize,
        "action_numel": int(act.n) if discrete else math.prod(act.shape or (1,)),
        "action_space": type(act).__name__,
    }


def _field_error(field: str, err: Exception) -> ConfigError:
    text = str(err)
    return ConfigError(text if text.startswith(f"{field}:") else f"{field}: {text}")


def check_atari(cfg: AtariConfig, *, memory: bool = True) -> None:
    """The Atari recipe's task checks: a known ALE game, the replay within memory.

    Raises:
        ConfigError: one line naming ``game`` or ``buffer_size``.
    """
    from .tasks import action_space_kind, resolve_atari_game

    try:
        resolve_atari_game(cfg.game)
    except ValueError as err:
        # A continuous-control id is a wrong recipe, not a typo: say which one to use.
        try:
            continuous = action_space_kind(cfg.game) == "continuous"
        except ValueError:
            continuous = False
        if continuous:
            raise ConfigError(
                f"game: {cfg.game!r} is a continuous-control task: use the SAC recipe "
                "(recipes/mujoco_sac.py)"
            ) from None
        raise _field_error("game", err) from None
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg))


def check_sac(cfg: SACConfig, *, memory: bool = True) -> None:
    """The SAC recipe's task checks: a continuous-control id, the replay within memory.

    Raises:
        ConfigError: one line naming ``env`` or ``buffer_size``.
    """
    from .tasks import resolve_continuous_env

    try:
        resolve_continuous_env(cfg.env)
    except ValueError as err:
        raise _field_error("env", err) from None
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg, task_spaces(cfg)))


def check_control(cfg: ControlConfig, *, memory: bool = True) -> None:
    """The control recipe's task checks: a discrete Gymnasium id or MinAtar game, memory.

    Raises:
        ConfigError: one line naming ``task`` or ``buffer_size``.
    """
    from .tasks import _check_control_id

    if not cfg.task.startswith("minatar:"):
        try:
            _check_control_id(cfg.task)
        except ValueError as err:
            raise _field_error("task", err) from None
    try:
        spaces = task_spaces(cfg)
    except ImportError as err:
        raise ConfigError(f"task: {cfg.task!r} needs the minatar package ({err})") from None
    if spaces["action_space"] != "Discrete":
        raise ConfigError(
            f"task: {cfg.task!r} has a {spaces['action_space']} action space; the DQN recipes "
            "need a Discrete one (continuous actions: recipes/mujoco_sac.py)"
        )
    if memory:
        check_replay_memory(cfg, replay_bytes(cfg, spaces))


#: Recipe kind -> (config class, task checks): what ``recipes/study.py`` checks per cell.
RECIPE_CHECKS: dict[str, tuple[type, Callable[..., None]]] = {
    "atari": (AtariConfig, check_atari),
    "mujoco": (SACConfig, check_sac),
    "control": (ControlConfig, check_control),
}


# --------------------------------------------------------------------------- command line
def load_run_config(
    config_cls: type[C],
    config: str | None,
    overrides: Sequence[str],
    *,
    check: Callable[[C], None] | None = None,
    tracking: bool = True,
    mlflow_names: bool = True,
) -> C:
    """A recipe's config, read and checked in the order of this module's docstring.

    Args:
        config_cls: the config dataclass.
        config: YAML file or ``None``.
        overrides: ``key=value`` strings.
        check: the recipe's task checks (:data:`RECIPE_CHECKS`).
        tracking: resolve ``env:NAME`` and check the tracking URI.
        mlflow_names: finish with :func:`check_names_with_mlflow`.

    Raises:
        ConfigError, ValueError: the first problem found, one line naming its field.
    """
    cfg = load_config(config_cls, config, list(overrides))
    check_budget(cfg)
    check_names(cfg)
    if tracking:
        if cfg.tracking_uri.startswith(ENV_PREFIX):
            cfg = dataclasses.replace(cfg, tracking_uri=resolve_env_uri(cfg.tracking_uri))
        try:
            check_tracking_uri(cfg.tracking_uri)
        except ValueError as err:
            raise _field_error("tracking_uri", err) from None
    check_device(cfg)
    if check is not None:
        check(cfg)
    check_registered_names(cfg)
    if mlflow_names:
        check_names_with_mlflow(cfg)
    return cfg


def parse_args(
    config_cls: type[C],
    argv: list[str] | None = None,
    *,
    default_config: str | None,
    description: str = "",
    check: Callable[[C], None] | None = None,
) -> tuple[argparse.Namespace, C]:
    """``[--config YAML] [--resume last|PATH] [key=value ...]`` into a validated config.

    Args:
        config_cls: the config dataclass (e.g. :class:`~torchrl_eaudeqn.config.SACConfig`).
        argv: arguments (``None``: ``sys.argv[1:]``).
        default_config: YAML used without ``--config`` (``None``: the dataclass defaults).
        description: the ``--help`` text.
        check: more checks on the loaded config (the task, ...); raises
            ``ValueError``/``ConfigError``.

    Returns:
        ``(args, cfg)``; on any error the process exits with status 2 and
        one line ``error: <field>: <message>`` on stderr, before anything
        is built (:func:`load_run_config`). ``tracking_uri=env:NAME`` is
        replaced by environment variable ``NAME`` (a URI with credentials
        stays off the command line).

    Example:
        >>> args, cfg = parse_args(ControlConfig, ["width=8"], default_config=None)
        >>> cfg.width, args.resume
        (8, None)
    """
    p = OneLineParser(description=description)
    p.add_argument("--config", default=default_config, help="YAML config")
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    if args.resume is not None and not args.resume.strip():
        p.error("--resume: expected 'last' or a checkpoint path, got ''")
    if args.config is not None and not args.config.strip():
        p.error("--config: expected a YAML file, got ''")
    try:
        cfg = load_run_config(config_cls, args.config, args.overrides, check=check)
    except (ConfigError, ValueError) as err:
        p.exit(2, f"error: {redact_text(str(err))}\n")
    hide_run_urls(cfg.tracking_uri)
    return args, cfg
