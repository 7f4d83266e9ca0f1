"""`etrm-sweep ui` runs a real MLflow server and ends it with itself: a SIGTERM (a `kill`) or SIGINT (Ctrl-C)
to the command leaves no server process behind. The reachability probe says yes to that live server and
no, in one line, once it is gone."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import pytest

from harness import CLI, ROOT
from orchestrator.reachability import check_tracking
from orchestrator.spec import SpecError
from services import alive, descendants, free_port, kill_pids, service_env, wait_until

pytestmark = pytest.mark.integration


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_ends_its_mlflow_server_with_itself(tmp_path, sig):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = subprocess.Popen(CLI + ["ui", "--port", str(port)], cwd=ROOT, env=service_env(ETRM_SWEEP_HOME=str(tmp_path / "ws")),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree: set[int] = set()
    try:
        wait_until(lambda: _health(url), 180, "etrm-sweep ui", ui)
        check_tracking(url)  # a live MLflow server passes the probe
        tree = descendants(ui.pid)
        assert len(tree) > 1, "the ui command should run the server as a child"
        ui.send_signal(sig)
        out, _ = ui.communicate(timeout=60)
        assert ui.returncode == 0, out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        assert not any(alive(p) for p in tree), "the MLflow server outlived `etrm-sweep ui`"
        assert not _health(url)
        with pytest.raises(SpecError, match=r"^tracking\.uri: the tracking server http://127\.0\.0\.1:\d+ does not answer"):
            check_tracking(url)
    finally:
        if ui.poll() is None:  # the test failed with the command still running
            kill_pids(descendants(ui.pid) | tree)
