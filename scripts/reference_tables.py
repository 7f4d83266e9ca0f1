"""Print README's config-key, encoder-knob and metric tables from their single sources (TrialConfig,
etrm.registry.ENCODERS, etrm.metrics.METRICS).

    .venv/bin/python scripts/reference_tables.py

tests/test_docs.py fails when README.md no longer contains this output, so the docs cannot drift.
"""

from __future__ import annotations

import typing

from etrm.config import EncoderConfig, config_keys
from etrm.metrics import METRICS
from etrm.registry import ENCODERS


def _type(field) -> str:
    ann = field.annotation
    name = ann.__name__ if hasattr(ann, "__name__") and not typing.get_args(ann) else str(ann)
    return name.replace("typing.", "").replace("|", "\\|")


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(list(value)) if isinstance(value, tuple) else str(value)


def config_table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in config_keys().items():
        rows.append(f"| `{key}` | `{_type(field)}` | `{_default(field)}` | {field.description.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def encoder_knobs_table() -> str:
    knobs = [k for k in EncoderConfig.model_fields if k != "type"]
    rows = ["| encoder | " + " | ".join(f"`{k}`" for k in knobs) + " |", "|---|" + "---|" * len(knobs)]
    for name, entry in ENCODERS.items():
        rows.append(f"| `{name}` | " + " | ".join("uses" if k in entry.knobs else "-" for k in knobs) + " |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | better | unit | kind | over halted | meaning |", "|---|---|---|---|---|---|"]
    for m in METRICS.values():
        text = m.description.replace("|", chr(92) + "|")
        rows.append(f"| `{m.name}` | {m.better or '-'} | {m.unit} | {m.kind} | {'yes' if m.halted else '-'} | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table(), encoder_knobs_table(), metrics_table(), sep="\n\n")
