"""One model version's registry tags as lines a person reads (pure: no MLflow call).

Example:
    >>> describe_tags({"sparsity_overall": "0.9", "sparsity_prunable": "0.95",
    ...                "nonzero_params": "10", "total_params": "100"})[:2]
    ['sparsity: overall 0.9000, prunable 0.9500', 'params: 10 nonzero / 100 total']
"""

from __future__ import annotations

__all__ = ["STORAGE_TAGS", "describe_storage", "describe_tags"]

#: Written by register_network (tracking/registry.py); older versions lack them.
STORAGE_TAGS = {
    "torchrl_eaudeqn.format",
    "artifact_bytes",
    "state_bytes",
    "dense_state_bytes",
    "size_ratio",
    "compact_layers",
    "latency_threads",
    "latency_ms_b1",
    "latency_ms_b32",
    "dense_latency_ms_b1",
    "dense_latency_ms_b32",
    "speedup_b1",
    "speedup_b32",
}


def describe_storage(tags: dict[str, str]) -> str | None:
    """One line on the stored form: dense or compact, bytes, measured latency."""
    if "torchrl_eaudeqn.format" not in tags:
        return None
    line = f"stored form: {tags['torchrl_eaudeqn.format']}"
    if tags.get("compact_layers") not in (None, "none"):
        line += f" (CSR layers: {tags['compact_layers']})"
    try:
        line += (
            f", artifact {int(tags['artifact_bytes']):,} bytes, tensors "
            f"{float(tags['size_ratio']):.1%} of dense"
        )
    except (KeyError, ValueError):
        pass
    latency = []
    for batch in (1, 32):
        if f"latency_ms_b{batch}" not in tags:
            continue
        text = f"{float(tags[f'latency_ms_b{batch}']):.3f} ms at batch {batch}"
        if f"speedup_b{batch}" in tags:  # compact versions: timed beside the dense form
            text += f" ({float(tags[f'speedup_b{batch}']):.2f}x the dense form)"
        latency.append(text)
    if latency:
        line += f"; latency {', '.join(latency)} ({tags.get('latency_threads', '?')} threads)"
    return line


def describe_tags(tags: dict[str, str]) -> list[str]:
    """Sparsity (overall, per layer, a SAC actor's critic), sizes and the other tags."""

    def num(key: str) -> str:
        try:
            return f"{float(tags[key]):.4f}"
        except (KeyError, ValueError):
            return "n/a"

    lines = [f"sparsity: overall {num('sparsity_overall')}, prunable {num('sparsity_prunable')}"]
    lines.append(
        f"params: {tags.get('nonzero_params', 'n/a')} nonzero / "
        f"{tags.get('total_params', 'n/a')} total"
    )
    layers = [k for k in tags if k.startswith("sparsity.")]
    if layers:
        per_layer = ", ".join(f"{k.removeprefix('sparsity.')} {num(k)}" for k in layers)
        lines.append(f"per-layer sparsity: {per_layer}")
    # A SAC actor's version also describes the critic it was trained with.
    critic = [k for k in tags if k.startswith("critic_sparsity")]
    if critic:
        per_layer = ", ".join(
            f"{k.removeprefix('critic_sparsity.')} {num(k)}"
            for k in critic
            if k.startswith("critic_sparsity.")
        )
        lines.append(
            f"critic sparsity: overall {num('critic_sparsity_overall')}, prunable "
            f"{num('critic_sparsity_prunable')}"
            + (f"; per layer: {per_layer}" if per_layer else "")
        )
    storage = describe_storage(tags)
    if storage:
        lines.append(storage)
    skip = {"sparsity_overall", "sparsity_prunable", "nonzero_params", "total_params"}
    skip |= {"version", "run_id"}  # already on the "model:" line
    skip |= STORAGE_TAGS | set(critic)
    others = [f"{k}={v}" for k, v in tags.items() if k not in skip and k not in layers]
    if others:
        lines.append("tags: " + ", ".join(others))
    return lines
