"""The TorchRL plumbing shared by the DQN and SAC losses (value estimator, key bookkeeping)."""

from __future__ import annotations

from dataclasses import dataclass

from tensordict.utils import NestedKey
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator, TD1Estimator, TDLambdaEstimator
from torchrl.objectives.value.advantages import ValueEstimatorBase

__all__ = ["BootstrapLossBase"]


_LOSS_FUNCTIONS = ("l2", "l1", "smooth_l1")


class BootstrapLossBase(LossModule):
    """TorchRL plumbing shared by the EauDeQN and EauDeSAC losses.

    Both compute the bootstrap value of the next state themselves (from one
    shared target network) and hand it to a TorchRL value estimator as
    ``next_value``; this class builds that estimator and keeps the key
    bookkeeping (``set_keys``, ``in_keys``) in TorchRL's conventions.
    Subclasses name their observation keys in ``_observation_keys`` and any
    further keys in ``_extra_in_keys``.
    """

    @dataclass
    class _AcceptedKeys:
        """Keys both losses read and write; change them with ``set_keys``.

        Attributes:
            action: the action taken.
            value: the value handed to the value estimator.
            value_target: value target written by the value estimator.
            priority: where the selected member's TD error is written.
            reward, done, terminated: read under ``"next"``.
            priority_weight: importance weights of prioritized replay.
        """

        action: NestedKey = "action"
        value: NestedKey = "state_value"
        value_target: NestedKey = "value_target"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = {
        ValueEstimators.TD0: TD0Estimator,
        ValueEstimators.TD1: TD1Estimator,
        ValueEstimators.TDLambda: TDLambdaEstimator,
    }

    def __init__(
        self, *, loss_function: str, reduction: str, use_prioritized_weights: str | bool
    ) -> None:
        if loss_function not in _LOSS_FUNCTIONS:
            raise ValueError(
                f"loss_function must be one of {_LOSS_FUNCTIONS}, got {loss_function!r}"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        super().__init__()
        self._in_keys = None
        self.loss_function = loss_function
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights

    def __getstate__(self) -> dict:
        # The latest forward's losses (``_last``) hold its graph, which a copy cannot take.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_last": None} if "_last" in state else dict(state)

    def _observation_keys(self) -> list[NestedKey]:
        raise NotImplementedError

    def _extra_in_keys(self) -> list[NestedKey]:
        return []

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            keys = self.tensor_keys
            self._value_estimator.set_keys(
                value=keys.value,
                value_target=keys.value_target,
                reward=keys.reward,
                done=keys.done,
                terminated=keys.terminated,
                **({"advantage": keys.advantage} if hasattr(keys, "advantage") else {}),
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        obs = self._observation_keys()
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *obs,
            *[("next", key) for key in obs],
            *self._extra_in_keys(),
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    def make_value_estimator(
        self, value_type: ValueEstimators | type[ValueEstimatorBase] | None = None, **hyperparams
    ) -> None:
        """Choose how the target is computed from the next value (TD(0) by default).

        Hyper-parameters (``gamma``, default 0.99; ``lmbda``) go to the TorchRL
        estimator; the next-state value comes from the loss's target network.
        """
        if value_type is None:
            value_type = self.default_value_estimator
        if isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase):
            cls = value_type
        elif value_type in self.SUPPORTED_VALUE_ESTIMATORS:
            cls = self.SUPPORTED_VALUE_ESTIMATORS[value_type]
        else:
            raise NotImplementedError(
                f"value_type must be one of {list(self.SUPPORTED_VALUE_ESTIMATORS)}, "
                f"got {value_type}"
            )
        hyperparams.setdefault("gamma", 0.99)
        self.value_type = value_type
        self._value_estimator = cls(value_network=None, **hyperparams)
        self._forward_value_estimator_keys()
