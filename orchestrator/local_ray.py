"""The Ray a launch starts on this machine: locked to loopback and a token, and cleaned up after.

Safe by default. Ray's servers (GCS, raylet, workers, agents) listen on the node's IP address, by
default the machine's network address, and a Ray without token auth runs any task sent to it as
the launching user. So a local Ray gets its node IP set to loopback, which every one of its servers
binds to, and token auth with a per-workspace token (a 0600 file) that the driver and its workers
share. A cluster (`--address`) keeps token auth too: its token comes from RAY_AUTH_TOKEN(_PATH).

Cleanup. A local Ray mostly dies with its driver, but not all of it: after a SIGKILL (or a closed
terminal) its dashboard and runtime-env agents stay, about 200 MB. So every launch that starts a
local Ray notes its own pid and the processes below it, and the next launch ends the noted processes
of drivers that are gone. A process is matched by pid AND start time, so a pid the system has since
given to another program is left alone.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from contextlib import suppress
from pathlib import Path

import psutil

# Ray keeps a machine-local node on loopback only where it believes clusters are unsupported (its
# switch for macOS and Windows); elsewhere it resolves 127.0.0.1 to the network address. This is the
# switch: read by the Ray processes the driver starts (env) and by the already imported driver (below).
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def secure_local(token_file: Path) -> None:
    """Make the Ray that `ray.init()` starts next listen on loopback alone and demand the workspace's token."""
    from ray._private import ray_constants

    os.environ[_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(ensure_token(token_file))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the workspace's file
    _reload_auth()


def dashboard_port(preferred: int = 8265) -> int:
    """Ray's usual dashboard port, or any free one when another Ray on this machine holds it (Ray itself
    would start without a dashboard then)."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def secure_cluster() -> None:
    """Join a cluster with token auth on, unless the user chose another RAY_AUTH_MODE explicitly."""
    from ray._private import ray_constants

    os.environ.pop(_LOOPBACK_SWITCH, None)
    ray_constants.ENABLE_RAY_CLUSTER = True
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    _reload_auth()


def _reload_auth() -> None:
    """Ray reads its auth mode and token once per process and caches both: make it read them again, as Ray's
    own `_enable_token_auth` does, so that the settings above hold for this driver too."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # private: not in Ray's stub

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ensure_token(path: Path) -> Path:
    """The workspace's Ray token: 256 random bits in a file only its owner can read, made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        partial.replace(path)  # two launches at once: each writes a whole token, the last one wins
    path.chmod(0o600)
    return path


def record(folder: Path) -> Path:
    """Note this driver and every process below it (call it right after starting a local Ray)."""
    folder.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    note = {"driver": [me.pid, me.create_time()],
            "processes": [[p.pid, p.create_time()] for p in me.children(recursive=True)]}
    path = folder / f"{me.pid}-{me.create_time():.0f}.json"  # a pid alone may be reused
    partial = path.with_suffix(".partial")  # a driver killed mid-write leaves no half note for reap to read
    partial.write_text(json.dumps(note))
    partial.replace(path)
    return path


def reap(folder: Path, grace: float = 5.0) -> list[int]:
    """End the noted processes of every driver that no longer runs; returns their pids."""
    ended = []
    for path in sorted(folder.glob("*.json")):
        note = json.loads(path.read_text())
        if _same_process(*note["driver"]):
            continue  # that launch is still running
        left = [p for p in (_same_process(pid, started) for pid, started in note["processes"]) if p]
        for process in left:
            with suppress(psutil.NoSuchProcess):
                process.terminate()
        _, survivors = psutil.wait_procs(left, timeout=grace)
        for process in survivors:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(survivors, timeout=grace)
        ended += [p.pid for p in left]
        path.unlink()
    return ended


def _same_process(pid: int, started: float) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return process if abs(process.create_time() - started) < 0.01 else None
    except psutil.Error:  # gone, or not ours to see
        return None
