"""MLflow model registry helpers: register a trained network, load it back anywhere.

A registered network is stored with ``torch.export`` (MLflow's ``"pt2"``
serialization): a traced graph plus weights as raw tensors, with no pickled
Python classes. Loading it therefore needs only ``mlflow`` and ``torch``, not
this package, and it passes MLflow's pickle-free check
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``)::

    import mlflow, torch
    q_net = mlflow.pytorch.load_model("models:/Pong-eaudeqn@latest")
    q_values = q_net(torch.zeros(1, 4, 84, 84, dtype=torch.uint8))

Every model version carries tags computed from the weights themselves
(:func:`network_sparsity_tags`), its storage and measured latency
(``artifact_bytes``, ``latency_ms_b1``, ...) beside the caller's tags (method,
game, seed, ...); the registered model carries ``torchrl_eaudeqn.kind`` so that
a Q-network and, say, a SAC actor never share one registry name.

``register_network(..., compact=True)`` stores the compact form of a sparse
network (:func:`torchrl_eaudeqn.export.compact`: sparse layers in CSR form,
computed with plain ATen ops), which loads the same way and needs nothing
more than ``torch`` and ``mlflow`` either.

:func:`load_registered` (:mod:`.loading`, re-exported here) loads only such
pickle-free, code-free models unless ``allow_pickle=True`` (docs/security.md).

``mlflow`` is imported lazily: :func:`network_sparsity_tags` works without it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._lazy import moved_names
from ..credentials import hide_run_urls, redact_text, redact_uri, resolve_env_uri
from ..export import Rule, compact_summary, measure_latency_ms, state_size_bytes
from ..export import compact as compact_module
from ..sparsity import prunable_parameter_names
from .checks import (  # checks that need neither torch nor MLflow
    BUILTIN_ALIASES,
    check_alias,
    check_model_name,
    check_tracking_uri,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "FORMAT_TAG",
    "KIND_TAG",
    "PICKLE_ENV",  # noqa: F822 - from .loading, lazily (see __getattr__)
    "UnsafeModelError",  # noqa: F822 - from .loading, lazily (see __getattr__)
    "check_model_dir",  # noqa: F822 - from .loading, lazily (see __getattr__)
    "check_tracking_uri",
    "get_version_tags",  # noqa: F822 - from .loading, lazily (see __getattr__)
    "load_registered",  # noqa: F822 - from .loading, lazily (see __getattr__)
    "network_sparsity_tags",
    "register_network",
    "resolve_tracking_uri",
]

#: Registered-model (and model-version) tag holding the kind of network.
KIND_TAG = "torchrl_eaudeqn.kind"
#: Model-version tag: ``"compact"`` (sparse layers in CSR form) or ``"dense"``.
FORMAT_TAG = "torchrl_eaudeqn.format"


def _mlflow():
    try:
        import mlflow
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "torchrl_eaudeqn.registry needs mlflow: pip install 'torchrl_eaudeqn[recipes]'"
        ) from err
    return mlflow


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    # MLflow's errors quote the request URL, credentials included.
    return redact_text(text.splitlines()[0]) if text else type(err).__name__


# --------------------------------------------------------------------------- sparsity tags
def network_sparsity_tags(net: nn.Module) -> dict[str, float | int]:
    """Sparsity statistics of a network, read from its weights (zeros count as pruned).

    Keys:

    * ``sparsity_overall``: fraction of zero entries over *all* parameters;
    * ``sparsity_prunable``: fraction of zero entries over Linear/Conv weights;
    * ``sparsity.<param>``: the same per prunable weight (e.g. ``sparsity.1.weight``);
    * ``nonzero_params`` / ``total_params``: counts over all parameters.

    The masks are not needed: a registered network has its masks applied, so
    its zeros *are* its pruned weights (a weight that trained to exactly 0.0
    counts too, which is what a sparse export can drop). Unlike
    :func:`~torchrl_eaudeqn.sparsity.sparsity_stats`, a zero bias counts as a zero.

    Args:
        net: any ``nn.Module``.

    Returns:
        ``{tag: value}`` with float fractions and int counts.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 2.0]]))
        ...     _ = net[2].weight.fill_(1.0)
        >>> tags = network_sparsity_tags(net)
        >>> tags["sparsity_prunable"], tags["sparsity.0.weight"], tags["nonzero_params"]
        (0.3333333333333333, 0.5, 7)
    """
    params = {name: p.detach() for name, p in net.named_parameters()}
    if not params:
        raise ValueError("net has no parameters")
    # zeros / numel (not 1 - kept / numel): exact fractions for round counts.
    zeros = {name: p.numel() - int(torch.count_nonzero(p)) for name, p in params.items()}
    total = sum(p.numel() for p in params.values())
    prunable = prunable_parameter_names(net)
    prunable_total = sum(params[n].numel() for n in prunable)
    tags: dict[str, float | int] = {
        "sparsity_overall": sum(zeros.values()) / total,
        "sparsity_prunable": sum(zeros[n] for n in prunable) / max(prunable_total, 1),
    }
    for name in prunable:
        tags[f"sparsity.{name}"] = zeros[name] / params[name].numel()
    tags["nonzero_params"] = total - sum(zeros.values())
    tags["total_params"] = total
    return tags


# --------------------------------------------------------------------------- tracking URI
def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, or MLflow's current one (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).

    ``env:NAME`` reads the URI from environment variable ``NAME``
    (:func:`~torchrl_eaudeqn.credentials.resolve_env_uri`).

    Example:
        >>> resolve_tracking_uri("sqlite:///runs.db")
        'sqlite:///runs.db'
    """
    if tracking_uri is not None:
        if not isinstance(tracking_uri, str) or not tracking_uri.strip():
            raise ValueError(f"tracking_uri must be a non-empty str, got {tracking_uri!r}")
        uri = resolve_env_uri(tracking_uri)
    else:
        uri = _mlflow().get_tracking_uri()
    hide_run_urls(uri)
    return uri


@contextlib.contextmanager
def _use_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``uri`` for a block.

    The fluent logging API (``mlflow.pytorch.log_model``, ``load_model`` of a
    ``models:/`` URI) reads the global URIs only. MLflow's own private
    ``_use_tracking_uri`` would unset a ``MLFLOW_TRACKING_URI`` variable the
    caller had set, so the exact previous state (module globals and the
    environment variables ``set_tracking_uri`` writes) is restored here.
    """
    mlflow = _mlflow()
    if mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri:
        yield
        return
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env_names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in env_names}
    saved_tracking = tracking_utils._tracking_uri
    saved_registry = registry_utils._registry_uri
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        registry_utils._registry_uri = saved_registry
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _client(uri: str) -> MlflowClient:
    return _mlflow().MlflowClient(tracking_uri=uri, registry_uri=uri)


# --------------------------------------------------------------------------- registration
def _check_name(name: object) -> str:
    return check_model_name(name, field="name")


def _check_alias(alias: object) -> str:
    return check_alias(alias, field="alias")


def _tag_str(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # shortest string that round-trips
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _tag_str(value.item())
    return str(value)


def _merge_tags(
    computed: Mapping[str, object], user: Mapping[str, object] | None, kind: str
) -> dict[str, str]:
    tags = {k: _tag_str(v) for k, v in computed.items()}
    tags[KIND_TAG] = kind
    for key, value in (user or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"tag names must be non-empty str, got {key!r}")
        text = _tag_str(value)
        # The computed sparsity tags describe the weights actually registered;
        # a caller may repeat them (e.g. from network_sparsity_tags) but not contradict them.
        if key in tags and tags[key] != text:
            raise ValueError(
                f"tag {key!r}={text!r} contradicts the value computed from the network "
                f"({tags[key]!r})"
            )
        tags[key] = text
    return tags


def _existing_kind(client: MlflowClient, name: str) -> tuple[bool, str | None, int]:
    """(exists, kind tag or None, number of versions) of registered model ``name``."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False, None, 0
        raise
    # latest_versions avoids a filter string (a quote in the name would break it).
    return True, model.tags.get(KIND_TAG), len(model.latest_versions or [])


def _signature(example: torch.Tensor, output: object):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(t: torch.Tensor) -> TensorSpec:
        # -1 marks the batch dimension as dynamic: MLflow exports it with Dim.AUTO.
        return TensorSpec(np.dtype(str(t.dtype).removeprefix("torch.")), (-1, *t.shape[1:]))

    outputs = [output] if isinstance(output, torch.Tensor) else list(output)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise ValueError("the network must return a tensor or a tuple of tensors")
    return ModelSignature(
        inputs=Schema([spec(example)]), outputs=Schema([spec(o) for o in outputs])
    )


def _same_outputs(a: object, b: object) -> bool:
    a = [a] if isinstance(a, torch.Tensor) else list(a)
    b = [b] if isinstance(b, torch.Tensor) else list(b)
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-5, atol=1e-6)
        for x, y in zip(a, b, strict=True)
    )


def _export_check(
    module: nn.Module, example: torch.Tensor, dynamic_batch: bool
) -> tuple[object, torch.export.ExportedProgram]:
    """Export once before logging: an unexportable network fails before any write.

    Returns the eager output on ``example`` and the exported program.
    """
    dynamic = [{0: torch.export.Dim.AUTO}] if dynamic_batch else None
    with torch.no_grad():
        eager = module(example)
        try:
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        except Exception as err:  # noqa: BLE001 - torch.export raises many types
            raise ValueError(
                f"torch.export cannot trace this network ({type(err).__name__}: "
                f"{_first_line(err)}); a registered network must be exportable"
            ) from err
        exported = program.module()(example)
    if not _same_outputs(eager, exported):
        raise ValueError("the exported network's outputs differ from the eager network's")
    return eager, program


def _format_tags(module: nn.Module, dense_bytes: int, compact: bool) -> dict[str, object]:
    """Storage tags known before export: format, tensor bytes, compact layers."""
    state = state_size_bytes(module)
    tags: dict[str, object] = {
        FORMAT_TAG: "compact" if compact else "dense",
        "state_bytes": state,
        "dense_state_bytes": dense_bytes,
        "size_ratio": state / max(dense_bytes, 1),
    }
    if compact:
        sparse = [
            layer["name"] for layer in compact_summary(module)["layers"] if layer["format"] == "csr"
        ]
        tags["compact_layers"] = ",".join(sparse) or "none"
        removed = getattr(module, "removed_channels", {})
        tags["removed_channels"] = (
            ",".join(f"{n}:{r}/{total}" for n, (r, total) in removed.items()) or "none"
        )
    return tags


def _artifact_tags(
    program: torch.export.ExportedProgram,
    example: torch.Tensor,
    latency_batches: Sequence[int],
    dynamic_batch: bool,
    dense_program: torch.export.ExportedProgram | None = None,
) -> dict[str, object]:
    """``artifact_bytes`` (the ``pt2`` file) and ``latency_ms_b<N>`` of the exported module.

    With ``dense_program`` (the same network with its zeros kept dense,
    exported the same way) also ``dense_latency_ms_b<N>`` and
    ``speedup_b<N>``: the two are timed in alternation, 3 rounds, and the
    speedup is the median of the per-round ratios, because on a shared
    machine two timings taken one after the other can differ by more than
    the effect being measured.
    """
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    tags: dict[str, object] = {"artifact_bytes": buffer.getbuffer().nbytes}
    if not latency_batches:
        return tags
    # The module a registry user gets back from mlflow.pytorch.load_model.
    loaded = program.module()
    dense = dense_program.module() if dense_program is not None else None
    batches = list(latency_batches) if dynamic_batch else [int(example.shape[0])]
    for batch in batches:
        x = example[:1].expand(int(batch), *example.shape[1:]).contiguous()
        if dense is None:
            tags[f"latency_ms_b{int(batch)}"] = round(measure_latency_ms(loaded, x, repeats=9), 4)
            continue
        own, base = [], []
        for _ in range(3):
            own.append(measure_latency_ms(loaded, x, repeats=5))
            base.append(measure_latency_ms(dense, x, repeats=5))
        tags[f"latency_ms_b{int(batch)}"] = round(statistics.median(own), 4)
        tags[f"dense_latency_ms_b{int(batch)}"] = round(statistics.median(base), 4)
        tags[f"speedup_b{int(batch)}"] = round(
            statistics.median(b / o for b, o in zip(base, own, strict=True)), 3
        )
    tags["latency_threads"] = torch.get_num_threads()
    return tags


def _resolve_run(
    client: MlflowClient, uri: str, run_id: str | None, experiment_name: str | None, name: str
) -> tuple[Any, bool]:
    """(run, created) -- the run to log into, creating one when none is given or active."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    if run_id is None:
        active = mlflow.active_run()
        # An active run lives in the global store; use it only when that is the target.
        if active is not None and mlflow.get_tracking_uri() == uri and experiment_name is None:
            run_id = active.info.run_id
    if run_id is not None:
        try:
            return client.get_run(run_id), False
        except MlflowException as err:
            raise ValueError(
                f"run_id {run_id!r} not found at tracking URI {redact_uri(uri)!r}: "
                f"{_first_line(err)}"
            ) from None
    if experiment_name is not None:
        exp = client.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name)
    elif mlflow.get_tracking_uri() == uri:
        # Honours mlflow.set_experiment and MLFLOW_EXPERIMENT_NAME / _ID.
        from mlflow.tracking.fluent import _get_experiment_id

        exp_id = _get_experiment_id() or "0"
    else:
        exp_id = "0"  # the default experiment every store has
    run = client.create_run(
        exp_id, run_name=f"register-{name}", tags={"torchrl_eaudeqn.purpose": "registration"}
    )
    return run, True


def register_network(
    net: nn.Module,
    *,
    name: str,
    example_input: torch.Tensor,
    tags: Mapping[str, str | float | int] | None = None,
    alias: str = "latest",
    tracking_uri: str | None = None,
    run_id: str | None = None,
    kind: str = "q_network",
    experiment_name: str | None = None,
    dynamic_batch: bool = True,
    compact: bool = False,
    compact_rule: Rule = "auto",
    latency_batches: Sequence[int] | None = (1, 32),
) -> ModelVersion:
    """Log ``net`` as an MLflow model and register it as a new version of ``name``.

    The network (or, with ``compact=True``, its compact CSR form) is
    serialized with ``torch.export`` (``"pt2"``): it loads with
    ``mlflow.pytorch.load_model("models:/<name>@<alias>")`` in any process that
    has ``mlflow`` and ``torch``, without this package. Its archive holds no
    pickled record, so it also loads with
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` (MLflow 3.x defaults that
    switch to true, and ``torch.export.load`` would unpickle any record it
    is given; :func:`load_registered` always loads with it off). The model
    version gets the tags of :func:`network_sparsity_tags`, ``tags``,
    ``torchrl_eaudeqn.kind``, ``torchrl_eaudeqn.format`` and the storage and
    speed of what is stored: ``artifact_bytes`` (the ``pt2`` file),
    ``state_bytes`` / ``dense_state_bytes`` / ``size_ratio`` (tensor bytes of
    the stored module / of the dense network), ``latency_ms_b1`` and
    ``latency_ms_b32`` (measured on the exported module, see
    ``latency_batches``) and ``latency_threads``; a compact version also gets
    ``dense_latency_ms_b<N>`` and ``speedup_b<N>`` (the same network with its
    zeros kept dense, exported the same way and timed in alternation with
    the compact one: what the compact form buys). The registered model gets
    ``torchrl_eaudeqn.kind``.
    Existing runs, versions and models are never modified, except that
    ``alias`` moves to the new version.

    Args:
        net: the network (e.g. ``actor.member_network()``); it is copied, put
            in eval mode and exported, never modified.
        name: registered model name (created if missing).
        example_input: one input batch; dim 0 is the batch dimension. It traces
            the graph and is stored as the input example.
        tags: extra model-version tags (method, game, seed, scores, ...).
        alias: alias of the new version. ``"latest"`` is MLflow's built-in alias
            for the highest version: it cannot be set, and needs not be, since
            the new version is the highest.
        tracking_uri: MLflow tracking (and registry) URI; ``None`` uses
            MLflow's current one (``sqlite:///mlflow.db`` by default).
        run_id: run to log the model under. ``None`` uses the active run if
            it belongs to ``tracking_uri``, else starts and ends a run of its own.
        kind: what the network is (``"q_network"``, ``"actor"``, ...). A
            registered model keeps one kind for all its versions.
        experiment_name: experiment of the run created when there is no run
            (created if missing); ``None`` uses the current/default experiment.
        dynamic_batch: export the batch dimension as dynamic (a batch-1
            example is repeated to batch 2 so that the exporter keeps it dynamic).
        compact: register the compact form
            (:func:`torchrl_eaudeqn.export.compact`): sparse layers stored and
            computed in CSR form, same outputs to float tolerance. The
            sparsity tags still describe the network's weights; the version
            gets ``torchrl_eaudeqn.format=compact`` and ``compact_layers``.
        compact_rule: the per-layer rule of ``compact`` (``"auto"``,
            ``"measure"``, ``"size"``, ``"sparse"``, ``"dense"``).
        latency_batches: batch sizes at which the exported module's forward
            latency is measured (median ms, current torch threads) and tagged
            as ``latency_ms_b<N>``; ``None`` or ``()`` skips the measurement.
            Without ``dynamic_batch`` only the example's batch is timed.

    Returns:
        The new ``ModelVersion``.

    Raises:
        ValueError: bad arguments, ``name`` registered with another kind, an
            unreachable tracking URI, or a network ``torch.export`` cannot trace
            -- all before anything is logged.

    Example:
        >>> import tempfile  # doctest: +SKIP
        >>> from torchrl_eaudeqn.modules import nature_cnn  # doctest: +SKIP
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
        ...     store = f"sqlite:///{tmp}/mlflow.db"
        ...     mv = register_network(
        ...         nature_cnn(6, "small"), name="pong-q", alias="champion",
        ...         example_input=torch.zeros(1, 4, 84, 84, dtype=torch.uint8),
        ...         tags={"game": "Pong"}, tracking_uri=store)
        ...     q_net = load_registered("models:/pong-q@champion", tracking_uri=store)
    """
    # ---- validate everything before touching the store
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    _check_name(name)
    _check_alias(alias)
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"kind must be a non-empty str, got {kind!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 1:
        raise ValueError("example_input must be a tensor with a leading batch dimension")
    if tags is not None and not isinstance(tags, Mapping):
        raise ValueError(f"tags must be a mapping, got {type(tags).__name__}")
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)

    module = copy.deepcopy(net).cpu().eval().requires_grad_(False)
    example = example_input.detach().cpu()
    if dynamic_batch and example.shape[0] == 1:
        # torch.export specialises size-1 dims to constants: batch 2 keeps it dynamic.
        example = example.expand(2, *example.shape[1:])
    example = example.contiguous()
    if latency_batches is not None and not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in latency_batches
    ):
        raise ValueError(f"latency_batches must be ints >= 1, got {latency_batches!r}")
    # The sparsity tags describe the network's weights, whatever form is stored.
    computed: dict[str, object] = dict(network_sparsity_tags(module))
    dense_bytes = state_size_bytes(module)
    dense_module = module
    if compact:
        module = compact_module(module, rule=compact_rule, example_input=example)
    computed.update(_format_tags(module, dense_bytes, compact))
    _merge_tags(computed, tags, kind)  # contradicting tags fail before the slow export

    client = _client(uri)
    exists, existing_kind, n_versions = _existing_kind(client, name)
    if exists and existing_kind != kind and (existing_kind is not None or n_versions > 0):
        raise ValueError(
            f"registered model {name!r} holds kind {existing_kind or '<untagged>'!r}, "
            f"not {kind!r}: choose another name"
        )
    output, program = _export_check(module, example, dynamic_batch)
    signature = _signature(example, output)
    dense_program = None
    if compact and latency_batches:
        # The baseline of speedup_b<N>: the same weights, zeros kept dense.
        dense_program = _export_check(dense_module, example, dynamic_batch)[1]
    computed.update(
        _artifact_tags(program, example, latency_batches or (), dynamic_batch, dense_program)
    )
    del program, dense_program, dense_module
    version_tags = _merge_tags(computed, tags, kind)

    # ---- log and register
    mlflow = _mlflow()
    from mlflow.entities import LoggedModelStatus

    run, own_run = _resolve_run(client, uri, run_id, experiment_name, name)
    run_id = run.info.run_id
    # Created here (not by log_model) so that it lands in the run's experiment:
    # MLflow would otherwise use the *current* experiment, whatever the run.
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={KIND_TAG: kind},
        model_type=kind,
    )
    status = "FAILED"
    try:
        # Both steps read the global URIs: log_model to store the model, and the
        # registry to look the logged model up when creating the version.
        with _use_uri(uri):
            info = mlflow.pytorch.log_model(
                module,
                name=name,
                input_example=example.numpy(),
                signature=signature,
                serialization_format="pt2",
                # Explicit requirements skip MLflow's slow inference subprocess.
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                ],
                run_id=run_id,
                model_id=logged.model_id,
            )
            if client.get_logged_model(logged.model_id).status != LoggedModelStatus.READY:
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            if not exists:
                client.create_registered_model(name, tags={KIND_TAG: kind})
            elif existing_kind is None:
                client.set_registered_model_tag(name, KIND_TAG, kind)
            version = client.create_model_version(
                name,
                source=info.model_uri,
                run_id=run_id,
                tags=version_tags,
                model_id=info.model_id,
            )
            if alias.lower() not in BUILTIN_ALIASES:
                client.set_registered_model_alias(name, alias, version.version)
        status = "FINISHED"
    finally:
        if status == "FAILED":
            with contextlib.suppress(Exception):  # keep the original error
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        if own_run:
            client.set_terminated(run_id, status)
    return client.get_model_version(name, version.version)


_LOADING = (
    "PICKLE_ENV",
    "UnsafeModelError",
    "check_model_dir",
    "get_version_tags",
    "load_registered",
)

# Loading lives in .loading, which imports this module's MLflow helpers.
__getattr__ = moved_names(__name__, "torchrl_eaudeqn.tracking.loading", _LOADING)
