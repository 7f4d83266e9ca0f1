"""Scale-out, for real: `etrm-sweep launch --address` on a Ray cluster of separate `ray start` nodes.

Trials ask for a custom resource (`resources.custom`) that only the two worker nodes offer, so
they run there and never on the head (the driver's node). One worker is hard-killed mid-trial,
after that trial wrote a checkpoint: Ray Tune retries the trial on the surviving worker, which
resumes it from the checkpoint, and MLflow (a real server) ends with one finished run per trial.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from etrm.checkpoint import read_checkpoint
from harness import CLI, TINY_BASE
from services import descendants, kill_node, kill_pids, service_env, start_mlflow, start_ray_cluster

# A three-process Ray cluster, a killed node and a resume elsewhere: about 2 minutes, heavy tier
pytestmark = [pytest.mark.integration, pytest.mark.heavy]

STEPS, LOG_EVERY, CHECKPOINT_EVERY = 240, 4, 20

_NODE_IDS = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps({n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}))
"""


def node_ids_by_zone(address: str) -> dict[str, str]:
    """zone resource -> Ray node id (asked by a short-lived driver, as services.live_nodes does)."""
    out = subprocess.run([sys.executable, "-c", _NODE_IDS, address], capture_output=True, text=True,
                         env=service_env(), timeout=120, check=True)
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    return {zone: node for node, res in nodes.items() for zone in ("zone_a", "zone_b") if zone in res}


def trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`etrm.sweep` = '{name}' and tags.`etrm.role` = 'trial'")


def tune_events(storage: Path, trial_id: str) -> list[tuple[int, str]]:
    """(step, node id) of every result the trial reported to Ray Tune, in order, across attempts."""
    events = []
    for path in storage.rglob("result.json"):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            if result["config"]["trial"]["trial_id"] == trial_id and "etrm" in result:
                events.append((result["etrm"]["step"], result["etrm"]["node_id"]))
    return events


@pytest.fixture
def mlflow(tmp_path):
    server = start_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path)
    yield server
    server.stop()


@pytest.fixture
def cluster():
    """Trials need `trial_slot`, which only the workers offer: the head (the driver's node) runs none."""
    nodes = start_ray_cluster(workers=[{"trial_slot": 1, "zone_a": 1}, {"trial_slot": 1, "zone_b": 1}])
    yield nodes
    nodes.stop()


def test_trials_spread_over_nodes_and_a_killed_node_resumes_elsewhere_from_its_checkpoint(tmp_path, mlflow, cluster):
    zones = node_ids_by_zone(cluster.address)
    storage = tmp_path / "storage"
    train = {**TINY_BASE["train"], "steps": STEPS, "log_every": LOG_EVERY, "checkpoint_every": CHECKPOINT_EVERY,
             "eval_every": STEPS, "threads": 1}
    spec = {
        "name": "cluster", "base": {**TINY_BASE, "train": train}, "seeds": [0, 1],
        "metrics": ["eval/exact_accuracy", "train/lm_loss"],
        "resources": {"cpu": 1, "custom": {"trial_slot": 1}}, "max_concurrent": 2, "max_failures": 1,
        "tracking": {"uri": mlflow.url}, "cluster": {"storage": str(storage)},
    }
    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(CLI + ["launch", str(spec_path), "--address", cluster.address],
                                  env=service_env(ETRM_SWEEP_HOME=str(tmp_path / "ws"), COLUMNS="160"),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(mlflow.url)
    try:
        # Wait until the trial on zone_b has written a checkpoint, then kill its node, hard.
        deadline, victim = time.monotonic() + 150, None
        while time.monotonic() < deadline and driver.poll() is None:
            on_b = [r for r in trial_runs(client, "cluster") if r.data.tags.get("etrm.node_id") == zones["zone_b"]]
            if on_b:
                victim = on_b[0].data.tags["etrm.trial_id"]
                checkpoint = storage / "cluster" / "checkpoints" / victim / "checkpoint.pt"
                if checkpoint.exists():
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"no trial on zone_b wrote a checkpoint (victim {victim}):\n{log.read_text()[-5000:]}")
        kill_node(cluster.workers[1])
        resumed_from = read_checkpoint(checkpoint)["step"]  # nothing can write it any more
        assert resumed_from < STEPS, "the trial finished before its node was killed: lengthen it"
        assert driver.wait(timeout=240) == 0, log.read_text()[-5000:]
    finally:
        kill_pids(descendants(driver.pid))

    runs = {r.data.tags["etrm.trial_id"]: r for r in trial_runs(client, "cluster")}
    assert len(runs) == 2 and victim in runs  # one run per trial: the retry reused it
    survivor = next(tid for tid in runs if tid != victim)
    for tid, run in runs.items():
        assert run.data.tags["etrm.status"] == "finished" and run.info.status == "FINISHED", tid
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lm_loss")]
        assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), (tid, steps)  # each step once, none lost
        assert "eval/exact_accuracy" in run.data.metrics
    # Both workers ran trials; the killed node's trial ended on the other worker.
    assert runs[survivor].data.tags["etrm.node_id"] == zones["zone_a"]
    assert runs[victim].data.tags["etrm.node_id"] == zones["zone_a"]
    assert [a.path for a in client.list_artifacts(runs[victim].info.run_id, "errors")] == ["errors/attempt-1.txt"]

    # The retry resumed from the checkpoint: its first report is the first log step after it, not step 4.
    events = tune_events(storage, victim)
    first_attempt = [step for step, node in events if node == zones["zone_b"]]
    retry = [step for step, node in events if node == zones["zone_a"]]
    assert first_attempt[0] == LOG_EVERY and first_attempt[-1] >= resumed_from, first_attempt
    assert retry == list(range(resumed_from + LOG_EVERY, STEPS + 1, LOG_EVERY)) + [STEPS], retry  # + the end event
