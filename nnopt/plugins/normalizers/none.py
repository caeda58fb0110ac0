"""The absence of normalization, as a component that can be named in a pipeline."""

from __future__ import annotations

from typing import ClassVar

from nnopt.core.kinds import Normalizer


class NoNorm(Normalizer):
    """No normalization: no feature layer, weights left un-reparametrized.

    The baseline that normalization methods are measured against — BatchNorm (Ioffe &
    Szegedy 2015, survey §4.3, ref. [92]), LayerNorm, weight and spectral normalization. It
    exists as a named component so that a pipeline can say ``norm: none`` explicitly and a
    ``matrix`` can sweep ``model.norm.name: [none, batchnorm, ...]``; its behaviour is the
    base ``Normalizer``'s (``feature_layer`` returns None, ``parametrize`` returns the layer).
    """

    cache_version: ClassVar[int] = 1
