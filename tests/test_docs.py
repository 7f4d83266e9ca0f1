"""The README's reference tables are generated from the code; this keeps them from drifting."""

import re
import subprocess
import sys
from pathlib import Path

from etrm.config import config_keys

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_holds_the_generated_config_and_metric_tables():
    tables = subprocess.run([sys.executable, "scripts/reference_tables.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip().split("\n\n")
    for table in tables:
        assert table in README, "README.md is stale: paste the output of scripts/reference_tables.py"


def test_every_config_key_is_documented_with_a_description():
    assert all(field.description for field in config_keys().values())
    documented = set(re.findall(r"^\| `([\w.]+)` \|", README, flags=re.M))
    assert set(config_keys()) <= documented


def test_readme_states_where_the_permutation_tests_stop_being_exact():
    from orchestrator import stats

    text = " ".join(README.split())
    assert f"Exact (every pattern enumerated) up to {stats.MAX_EXACT_FLIPS} pairs" in text
    assert f"up to {stats.MAX_EXACT_RELABELINGS:,} relabelings" in text
    assert text.count(f"{stats.N_RANDOM_DRAWS:,} seeded random") == 2
