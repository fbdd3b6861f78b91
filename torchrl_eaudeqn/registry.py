"""The MLflow model registry, by its old path (now :mod:`torchrl_eaudeqn.tracking.registry`)."""

from .tracking.registry import (
    FORMAT_TAG,
    KIND_TAG,
    PICKLE_ENV,
    UnsafeModelError,
    check_model_dir,
    check_tracking_uri,
    get_version_tags,
    load_registered,
    network_sparsity_tags,
    register_network,
    resolve_tracking_uri,
)

__all__ = [
    "FORMAT_TAG",
    "KIND_TAG",
    "PICKLE_ENV",
    "UnsafeModelError",
    "check_model_dir",
    "check_tracking_uri",
    "get_version_tags",
    "load_registered",
    "network_sparsity_tags",
    "register_network",
    "resolve_tracking_uri",
]
