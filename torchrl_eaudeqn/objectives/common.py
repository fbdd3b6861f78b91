"""The TorchRL plumbing shared by the DQN and SAC losses (value estimator, key bookkeeping)."""

from __future__ import annotations

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

    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = {
        ValueEstimators.TD0: TD0Estimator,
        ValueEstimators.TD1: TD1Estimator,
        ValueEstimators.TDLambda: TDLambdaEstimator,
    }

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
