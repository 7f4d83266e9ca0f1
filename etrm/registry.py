"""The encoder registry: name -> where its class lives (resolved only when a model is built) and the knobs it uses.

One table, as torchtitan's train-spec registry is: the config accepts exactly these names (checking a
config or a spec never imports torch), and the model builds from the same entry. Adding an encoder is
one line here and its class in etrm/encoders.py (reference §4 names the five).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torch import nn


class Encoder(NamedTuple):
    path: str  # "module:Class", imported only when a model is built
    # The EncoderConfig knobs it builds from. Config validation refuses any other set away from its default:
    # two configs that differ only there would be one model under two names (tests/test_encoders.py checks
    # each claim against the module).
    knobs: tuple[str, ...]


_SET_ENCODER = ("set_layers", "norm_style", "final_norm")
_LATENT = ("kl_weight", "latent_dim")
IGNORED_BECAUSE = {**dict.fromkeys(_SET_ENCODER, "it has no set encoder"),
                   **dict.fromkeys(_LATENT, "it is deterministic: no latent, no KL")}

ENCODERS: dict[str, Encoder] = {
    "standard": Encoder("etrm.encoders:StandardEncoder", ("num_layers", *_SET_ENCODER, "output_tokens")),
    "hybrid_standard": Encoder("etrm.encoders:HybridStandardEncoder", ("num_layers", *_SET_ENCODER, "output_tokens")),
    "hybrid_variational": Encoder("etrm.encoders:HybridVariationalEncoder",
                                  ("num_layers", *_SET_ENCODER, *_LATENT, "output_tokens")),
    "lpn_standard": Encoder("etrm.encoders:LPNStandardEncoder", ("num_layers", "output_tokens")),
    "lpn_variational": Encoder("etrm.encoders:LPNVariationalEncoder", ("num_layers", *_LATENT, "output_tokens")),
}


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered under `name` (this imports torch and the encoders)."""
    module, _, attr = ENCODERS[name].path.partition(":")
    return getattr(importlib.import_module(module), attr)
