"""The encoder registry: name -> where its class lives, resolved only when a model is built.

One table, as torchtitan's train-spec registry is: the config accepts exactly these names (checking a
config or a spec never imports torch), and the model builds from the same entry. Adding an encoder is
one line here and its class in etrm/encoders.py (reference §4 names the five).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ENCODERS: dict[str, str] = {
    "standard": "etrm.encoders:StandardEncoder",
    "hybrid_standard": "etrm.encoders:HybridStandardEncoder",
    "hybrid_variational": "etrm.encoders:HybridVariationalEncoder",
    "lpn_standard": "etrm.encoders:LPNStandardEncoder",
    "lpn_variational": "etrm.encoders:LPNVariationalEncoder",
}


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered under `name` (this imports torch and the encoders)."""
    module, _, attr = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
