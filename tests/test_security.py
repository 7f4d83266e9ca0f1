"""Safe by default: a launch's local Ray listens on loopback alone and refuses a client without the
workspace's token, and no name from a spec or the command line becomes a path outside the workspace.

The Ray test launches a real sweep with the real CLI and inspects its process tree while a trial runs.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import yaml

from harness import CLI, TINY_BASE, run_cli, write_spec
from services import descendants, kill_pids, service_env

_PROBE = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="error")
print("NODES", len(ray.nodes()))
"""


def _listening(pids: set[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket of these processes."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((pid, process.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def _flag(pids: set[int], program: str, flag: str) -> str:
    """The value of `flag=VALUE` on the command line of the process running `program`."""
    for pid in pids:
        try:
            args = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if any(program in arg for arg in args):
            return next(arg.split("=", 1)[1] for arg in args if arg.startswith(flag + "="))
    alive = []
    for pid in pids:
        try:
            alive.append(" ".join(psutil.Process(pid).cmdline())[:160])
        except psutil.Error:
            continue
    raise AssertionError(f"no process runs {program}; running: {alive}")


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _probe_gcs(address: str, env: dict[str, str]) -> subprocess.Popen:
    """A driver that tries to join the Ray at `address` and prints its node count if let in."""
    return subprocess.Popen([sys.executable, "-c", _PROBE, address], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
def test_local_ray_listens_on_loopback_only_and_refuses_a_client_without_the_token(tmp_path):
    ws = tmp_path / "ws"
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 400, "eval_every": 400, "checkpoint_every": 10}}
    spec = write_spec(tmp_path, "guarded", base=base, axes={}, seeds=[0], contrast=None, max_concurrent=1)
    driver = subprocess.Popen(CLI + ["launch", str(spec)], env=service_env(ETRM_SWEEP_HOME=str(ws)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not list((ws / "checkpoints" / "guarded").glob("*/checkpoint.pt")):  # a trial is training
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no trial wrote a checkpoint in 180 s"
            time.sleep(0.5)
        pids = descendants(driver.pid)
        sockets = _listening(pids)
        names = {name for _, name, _, _ in sockets}
        # GCS, raylet, the dashboard and its agents, the trial's worker: all of them, not a lucky few
        assert len(sockets) >= 8 and {"gcs_server", "raylet"} <= names, sockets
        exposed = [s for s in sockets if not _loopback(s[2])]
        assert not exposed, f"listening beyond loopback: {exposed}"

        gcs_ports = {port for _, name, _, port in sockets if name == "gcs_server"}
        assert len(gcs_ports) == 1, sockets
        address = f"127.0.0.1:{gcs_ports.pop()}"
        token = ws / "ray-token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600

        # The dashboard first, while the trial runs: it asks for the token too.
        dashboard = _flag(pids, "dashboard/dashboard.py", "--port")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=10)
        assert denied.value.code in (401, 403)
        request = urllib.request.Request(f"http://127.0.0.1:{dashboard}/api/version",
                                         headers={"Authorization": f"Bearer {token.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

        # Every probe joins as a driver on this machine would (Ray's loopback switch, see local_ray.py):
        # the token is the only difference between the one let in and the ones refused.
        clean = {**{k: v for k, v in service_env().items() if not k.startswith("RAY_AUTH")},
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        started = time.monotonic()
        allowed = _probe_gcs(address, {**clean, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        out, err = allowed.communicate(timeout=240)
        assert allowed.returncode == 0 and "NODES 1" in out, err[-2000:]
        # The refused ones get five times what the one let in needed (30 s at least), all at once: a
        # refused driver retries until it gives up or is killed, and never gets in either way.
        window = max(30.0, 5 * (time.monotonic() - started))
        intruders = {label: _probe_gcs(address, env) for label, env in [
            ("no token", clean), ("auth off", {**clean, "RAY_AUTH_MODE": "disabled"}),
            ("wrong token", {**clean, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})]}
        deadline = time.monotonic() + window
        for label, probe in intruders.items():
            try:
                out, _ = probe.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # still refused when the window closed: it never got in
                probe.kill()
                out, _ = probe.communicate()
            assert probe.returncode != 0 and "NODES" not in out, (label, out)
    finally:
        kill_pids(descendants(driver.pid) | pids)


def test_experiment_names_that_would_escape_the_workspace_are_refused(tmp_path):
    for bad in ["../../../x", "/tmp/elsewhere", "a/b", "..", "Upper"]:
        spec = write_spec(tmp_path, "escape", tracking={"experiment": bad})
        out = run_cli(["validate", str(spec)], tmp_path / "ws", timeout=60)
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: tracking.experiment:"), (bad, out.stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command", ["status", "resume", "compare", "ui"])
def test_sweep_name_arguments_are_checked_before_they_touch_a_path(tmp_path, command):
    ws = tmp_path / "a" / "ws"
    (tmp_path / "a").mkdir()
    outside = tmp_path / "a" / "sweeps.yaml"  # where `../sweeps` would point from the workspace's sweeps/ folder
    outside.write_text(yaml.safe_dump({"name": "x", "seeds": [0]}))
    out = run_cli([command, "../../sweeps"], ws, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: no sweep can be named '../../sweeps': use up to 64 lowercase letters, digits, '-' and '_' "
        "(it names folders)"]


def test_the_workspace_token_is_made_once_and_kept_private(tmp_path):
    from orchestrator.local_ray import ensure_token

    path = ensure_token(tmp_path / "ws" / "ray-token")
    first = path.read_text()
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    assert ensure_token(path).read_text() == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(tmp_path / "other" / "ray-token").read_text() != first
