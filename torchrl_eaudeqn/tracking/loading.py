"""Load a registered network back: pickle-free, code-free, checked before it loads.

:func:`load_registered` resolves ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``, downloads the version once, checks the copy
(:func:`check_model_dir`: a ``torch.export`` archive, no pickled Python
objects, no code paths; :class:`UnsafeModelError` otherwise) and loads that
copy with MLflow's pickle switch (:data:`PICKLE_ENV`) off, unless
``allow_pickle=True`` (docs/security.md). :func:`get_version_tags` reads a
version's tags. Registering is :mod:`torchrl_eaudeqn.tracking.registry`, which
re-exports these names.

Example:
    >>> issubclass(UnsafeModelError, ValueError), PICKLE_ENV
    (True, 'MLFLOW_ALLOW_PICKLE_DESERIALIZATION')
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..credentials import redact_uri
from .checks import MODELS_URI_RE, check_tracking_uri
from .registry import _client, _first_line, _mlflow, _use_uri, resolve_tracking_uri

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "PICKLE_ENV",
    "UnsafeModelError",
    "check_model_dir",
    "get_version_tags",
    "load_registered",
]

_MODELS_URI_RE = MODELS_URI_RE


def _model_version(uri: str, tracking_uri: str | None) -> tuple[str, ModelVersion]:
    """(tracking URI, model version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    from mlflow.exceptions import MlflowException

    if not isinstance(uri, str):
        raise ValueError(f"model URI must be a str, got {uri!r}")
    match = _MODELS_URI_RE.match(uri)
    if match is None:
        raise ValueError(
            f"model URI {uri!r} is not of the form models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    turi = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(turi, must_exist=True)
    shown = redact_uri(turi)
    client = _client(turi)
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"cannot read {uri!r} from {shown!r}: {_first_line(err)}") from err
        raise ValueError(
            f"no registered model {name!r} at tracking URI {shown!r} (model URI {uri!r})"
        ) from None
    try:
        if version is not None:
            return turi, client.get_model_version(name, version)
        return turi, client.get_model_version_by_alias(name, alias)
    except MlflowException:
        aliases = sorted(model.aliases) if isinstance(model.aliases, dict) else []
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise ValueError(
            f"model URI {uri!r}: registered model {name!r} has no {what} at tracking URI "
            f"{shown!r} (aliases: {', '.join(aliases) or 'none'}; 'latest' works once a "
            "version exists)"
        ) from None


#: MLflow's switch for unpickling models (``mlflow.pytorch``); MLflow 3.x defaults it to true.
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class UnsafeModelError(ValueError):
    """A registered model that loading would unpickle or import code from (one-line message).

    Example:
        >>> issubclass(UnsafeModelError, ValueError)
        True
    """


@contextlib.contextmanager
def _pickle_setting(allow: bool) -> Iterator[None]:
    """Set :data:`PICKLE_ENV` for a block (MLflow reads it at each load), then restore it."""
    saved = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "true" if allow else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = saved


def check_model_dir(path: str | os.PathLike, uri: str = "") -> None:
    r"""Refuse a downloaded MLflow PyTorch model that would run code before MLflow's own check.

    MLflow's ``mlflow.pytorch.load_model`` puts a model's ``code/`` directory
    on ``sys.path`` and imports the module named in ``pickle_module_info.txt``
    before it looks at :data:`PICKLE_ENV`; a model saved with pickle
    (``data/model.pth``) is unpickled. Only a ``pt2`` model without bundled
    code passes; its archive is then checked by MLflow itself (every record
    plain JSON, text or ``weights_only``-loadable tensors).

    Args:
        path: the local model directory (with ``MLmodel``).
        uri: the model's URI, for the message.

    Raises:
        UnsafeModelError: one line naming the model and what would run.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
        >>> (d / "data").mkdir(); _ = (d / "data" / "model.pth").write_bytes(b"")
        >>> check_model_dir(d, "models:/x/1")
        Traceback (most recent call last):
        ...
        torchrl_eaudeqn.tracking.loading.UnsafeModelError: models:/x/1 is stored with pickle, ...
    """
    import yaml

    path = Path(path)
    name = uri or str(path)
    hint = (
        "which can run code: refused (pass allow_pickle=True, or --allow-pickle to "
        "evaluate.py, only for a model you trust)"
    )
    try:
        meta = yaml.safe_load((path / "MLmodel").read_text())
        conf = meta["flavors"]["pytorch"]
        data_dir = path / str(conf["model_data"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise UnsafeModelError(
            f"{name} is not an MLflow PyTorch model ({type(err).__name__}: {err})"
        ) from None
    if conf.get("code"):
        raise UnsafeModelError(f"{name} bundles Python code ({conf['code']}/), {hint}")
    if (data_dir / "model.pth").exists() or not (data_dir / "model.pt2").is_file():
        raise UnsafeModelError(
            f"{name} is stored with pickle, not as a torch.export pt2 archive; loading it "
            f"unpickles Python objects, {hint}"
        )


def load_registered(
    uri: str, *, tracking_uri: str | None = None, allow_pickle: bool = False
) -> nn.Module:
    """Load a registered network: ``mlflow.pytorch.load_model`` with clear errors, no code run.

    By default only a ``torch.export`` (``pt2``) model without bundled code
    loads (what :func:`register_network` stores): the model is downloaded,
    checked (:func:`check_model_dir`), and loaded with
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, under which MLflow checks
    that every record of the ``pt2`` archive is plain JSON, text or a
    ``weights_only``-loadable tensor before ``torch.export.load`` (which
    would unpickle them) reads it. A model saved with pickle, or with code,
    needs ``allow_pickle=True``: loading it can run anything its author
    wrote.

    Args:
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        tracking_uri: store to read; ``None`` uses MLflow's current one.
        allow_pickle: also load pickled models and models with code (trusted
            models only).

    Returns:
        The exported network (a ``torch.fx.GraphModule``): call it on a batch.

    Raises:
        ValueError: malformed URI, missing store, model, alias or version
            (one line, naming the URI).
        UnsafeModelError: the model would need unpickling or its code (a
            ``ValueError``, one line); nothing in it ran.

    Example:
        >>> q_net = load_registered("models:/pong-q@champion")  # doctest: +SKIP
        >>> q_net(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape  # doctest: +SKIP
        torch.Size([1, 6])
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    turi, version = _model_version(uri, tracking_uri)
    shown = redact_uri(turi)
    source = f"models:/{version.name}/{version.version}"
    mlflow = _mlflow()
    try:
        if allow_pickle:
            with _use_uri(turi), _pickle_setting(True):
                return mlflow.pytorch.load_model(source)
        with tempfile.TemporaryDirectory(prefix="eaudeqn-model-") as tmp:
            with _use_uri(turi):
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
            check_model_dir(local, uri)
            # What was checked is what loads: the local copy, not a second download.
            with _pickle_setting(False):
                try:
                    return mlflow.pytorch.load_model(local)
                except MlflowException as err:
                    if "pickle" not in str(err).lower():
                        raise
                    record = re.search(r"record '([^']+)'", str(err))
                    what = f" (record {record.group(1)} of its pt2 archive)" if record else ""
                    raise UnsafeModelError(
                        f"{uri} needs Python objects unpickled to load{what}, which can run "
                        "code: refused (pass allow_pickle=True, or --allow-pickle to "
                        "evaluate.py, only for a model you trust)"
                    ) from None
    except MlflowException as err:
        raise ValueError(f"cannot load {uri!r} from {shown!r}: {_first_line(err)}") from err


def get_version_tags(uri: str, *, tracking_uri: str | None = None) -> dict[str, str]:
    """Tags of the model version ``uri`` points to (plus ``version`` and ``run_id``).

    Args:
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        tracking_uri: store to read; ``None`` uses MLflow's current one.

    Returns:
        ``{tag: value}`` as stored (strings), with ``"version"`` and
        ``"run_id"`` added unless a tag of that name exists.

    Example:
        >>> get_version_tags("models:/pong-q@champion")["sparsity_prunable"]  # doctest: +SKIP
        '0.0'
    """
    _, version = _model_version(uri, tracking_uri)
    tags = dict(version.tags)
    tags.setdefault("version", str(version.version))
    tags.setdefault("run_id", str(version.run_id))
    return tags
