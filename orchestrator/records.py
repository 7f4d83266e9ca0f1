"""What a trial left behind, as the comparison sees it (tracking.py builds these from MLflow runs).
Plain data: the sweep driver reads it before any trial starts."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from etrm.status import TrialStatus


@dataclass
class TrialRecord:
    trial_id: str
    cell_id: str
    seed: int
    variant: dict[str, Any]  # the spec's axis keys -> values for this trial (no seed)
    status: TrialStatus  # one of etrm.status.RECORDED
    final: dict[str, float]  # last logged value of each metric
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] in step order
    run_id: str
    code_version: str = ""  # git sha of the code that ran it (`-dirty` with local changes); "" unknown


def mlflow_metric_name(name: str) -> str:
    """MLflow rejects '@' (and anything outside [/\\w.\\- :]), so `ARC/pass@1` is logged as `ARC/pass_at_1`."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))

