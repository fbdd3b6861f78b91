"""The study's Ray backend, by its old path: it lives in :mod:`torchrl_eaudeqn.study.cluster`."""

from .study.cluster import (
    LOCAL_OBJECT_STORE_BYTES,
    USER_ERROR_RC,
    RunFailed,
    RunRejected,
    check_cluster_tracking,
    is_local_address,
    ray_available,
    resolve_backend,
    run_grid_ray,
)

__all__ = [
    "LOCAL_OBJECT_STORE_BYTES",
    "USER_ERROR_RC",
    "RunFailed",
    "RunRejected",
    "check_cluster_tracking",
    "is_local_address",
    "ray_available",
    "resolve_backend",
    "run_grid_ray",
]
