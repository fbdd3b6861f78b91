"""Lightning's tqdm progress bar, counting env steps of the budget."""

from __future__ import annotations

import math
import sys
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from ..console import human_count, human_percent, human_value

__all__ = ["EnvStepProgressBar"]


class _EnvStepTqdm(Tqdm):
    """Lightning's tqdm writing env steps with :func:`~torchrl_eaudeqn.console.human_count`."""

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["steps"] = human_count(d["n"])
        d["budget"] = human_count(d["total"]) if d["total"] else "?"
        return d


class EnvStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, counting the env steps of an :class:`OnlineRLModule`.

    Its total is the env-step budget (``cfg.env_steps``) and it starts at the
    module's env steps (a resumed run starts where it stopped); the rate is
    env steps per second of this fit (the random baseline before the first
    step is not counted). The postfix shows the last training episode's
    score, the last evaluation, the acting network's sparsity and the
    selected member (:meth:`OnlineRLModule._log_metrics`), formatted by
    :mod:`torchrl_eaudeqn.console` (``17.0k``, ``1,520``, ``75.8%``).

    Args:
        description: text before the bar (the recipes pass the task).
        refresh_rate: training steps between redraws.

    Example:
        >>> EnvStepProgressBar.format_postfix(
        ...     {"score": 1520.0, "sparsity": 0.7581, "member": 2.0}, last_eval=float("nan"))
        'score 1,520 | eval - | 75.8% sparse, member 2'
        >>> EnvStepProgressBar.format_postfix({"return": -36.2, "sparsity_actor": 0.3,
        ...     "sparsity_critic": 0.0, "member_actor": 2.0, "member_critic": 0.0}, 757.5)
        'return -36.2 | eval 758 | actor 30.0% sparse, member 2 | critic 0.0% sparse, member 0'

    A run shows ``EauDeQN on RoadRunner:  34%|███▍ | 17.0k/50.0k [01:52<03:38,
    152 steps/s, score 900 | eval 940 | 75.8% sparse, member 2]``.
    """

    BAR_FORMAT = "{l_bar}{bar}| {steps}/{budget} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    def __init__(self, description: str = "training", refresh_rate: int = 50) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=False)
        self.description = description

    @staticmethod
    def format_postfix(progress: dict[str, float], last_eval: float) -> str:
        """The postfix: last episode score, last evaluation, then sparsity and member per network.

        ``progress``'s first entry is the episode score; ``sparsity`` /
        ``member`` (or ``sparsity_<network>`` / ``member_<network>``) the rest.
        """
        items = list(progress.items())
        parts = [f"{k} {human_value(v)}" for k, v in items[:1]]
        parts.append(f"eval {human_value(last_eval)}")
        networks: dict[str, dict[str, float]] = {}
        for key, value in items[1:]:
            what, _, network = key.partition("_")
            networks.setdefault(network, {})[what] = value
        for network, values in networks.items():
            text = [f"{human_percent(values['sparsity'])} sparse"] if "sparsity" in values else []
            if "member" in values and math.isfinite(values["member"]):
                text.append(f"member {values['member']:.0f}")
            parts.append(f"{network} " * bool(network) + ", ".join(text))
        return " | ".join(parts)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._budget = (int(pl_module.cfg.env_steps), int(pl_module.env_steps))
        super().on_train_start(trainer, pl_module)

    def init_train_tqdm(self) -> Tqdm:
        total, initial = getattr(self, "_budget", (None, 0))
        return _EnvStepTqdm(
            desc=self.description,
            total=total,
            initial=initial,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            unit=" steps",
            unit_scale=True,
            bar_format=self.BAR_FORMAT,
        )

    def _show(self, pl_module: Any, postfix: bool = True) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        if postfix:
            bar.set_postfix_str(self.postfix(pl_module), refresh=False)
        bar.n = int(pl_module.env_steps)
        bar.refresh()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning's bar counts batches of the epoch; this one counts env steps
        # of the whole budget, and its clock starts here (after any baseline).
        bar = self.train_progress_bar
        bar.reset(total=int(pl_module.cfg.env_steps))
        bar.initial = bar.n = bar.last_print_n = int(pl_module.env_steps)
        bar.set_description(self.description, refresh=False)
        self._show(pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = pl_module.env_steps >= pl_module.cfg.env_steps
        if self.is_enabled and ((batch_idx + 1) % self.refresh_rate == 0 or done):
            self._show(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._show(pl_module)

    def postfix(self, pl_module: Any) -> str:
        """:meth:`format_postfix` of the module's latest progress and evaluation."""
        key = f"eval/{pl_module.EVAL_NAME}_mean"
        evals = [r[key] for r in pl_module.eval_results if key in r]
        return self.format_postfix(dict(pl_module.progress), evals[-1] if evals else float("nan"))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, str]:
        # Lightning's own hooks would set these as the postfix; this bar writes postfix().
        return {}
