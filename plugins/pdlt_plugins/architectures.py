"""Built-in architectures: the fully connected MLP (book §2.1)."""

from __future__ import annotations

import attrs

from pdlt.architecture import Architecture
from pdlt.hookspecs import hookimpl

__all__ = ["MLP"]


@attrs.frozen(kw_only=True)
class MLP(Architecture):
    """Fully connected network z^(ℓ+1) = b^(ℓ+1) + W^(ℓ+1) σ(z^(ℓ)) (book (2.5)).

    Weights W^(ℓ) ~ N(0, C_W^(ℓ)/n_{ℓ−1}), biases b^(ℓ) ~ N(0, C_b^(ℓ)); the first layer acts
    on the raw inputs x (no activation).  Deep linear networks are the MLP with the linear
    activation.
    """

    name = "mlp"

    def first_layer(self, X, *, order="full"):
        from . import mlp_recursions

        return mlp_recursions.first_layer(self, X, order)

    def next_layer(self, stats, ell, *, order="full", rule=None):
        from . import mlp_recursions

        return mlp_recursions.next_layer(self, stats, ell, order, rule)

    def sample_forward(self, X, size, rng, *, ntk=True):
        from pdlt.networks import mlp_forward

        return mlp_forward(self, X, size, rng, ntk=ntk)


@hookimpl
def pdlt_register_architectures():
    return [MLP]
