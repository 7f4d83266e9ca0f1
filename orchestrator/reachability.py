"""Is anything there? A few-second probe of the Ray cluster and the tracking server before a launch.

Ray retries a dead cluster address for many minutes and MLflow's HTTP client retries a dead
server for four, each ending in a long traceback (and a local Ray may already be up by then).
A plain TCP connect (or an HTTP GET of MLflow's /health) answers in seconds instead, so a
wrong address or a server that is down is one line, exit 2, before anything starts.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from orchestrator.spec import SpecError, SweepSpec

PROBE_TIMEOUT = 5.0  # seconds per probe: a live server on any network answers a connect far sooner
RAY_DEFAULT_PORT = 6379
DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def _connect_problem(host: str, port: int) -> str | None:
    """Why a TCP connection to host:port fails, or None when something accepts it."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return None
    except socket.gaierror:
        return f"cannot resolve host {host!r}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {PROBE_TIMEOUT:g} s"
    except OSError as err:
        return f"nothing listens at {host}:{port} ({err.strerror or err})"


def check_cluster(address: str | None, field: str = "cluster.address") -> None:
    """Refuse a Ray address where nothing listens (`auto` and None are Ray's own business)."""
    if not address or address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    default = 10001 if address.startswith("ray://") else RAY_DEFAULT_PORT
    try:
        host, port = parts.hostname, parts.port or default
    except ValueError:
        raise SpecError(f"{field}: {address!r} is not host:port, ray://host:port or auto") from None
    if not host:
        raise SpecError(f"{field}: {address!r} is not host:port, ray://host:port or auto")
    if (problem := _connect_problem(host, port)) is not None:
        raise SpecError(f"{field}: no Ray cluster at {address}: {problem}")


def check_tracking(uri: str, field: str = "tracking.uri") -> None:
    """Refuse an MLflow server (or tracking database server) that does not answer."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT).close()
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                return  # a server that wants credentials: MLflow's own client brings them
            raise SpecError(f"{field}: {uri} answers HTTP {err.code} for /health: not an MLflow tracking server?") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            text = reason if isinstance(reason, str) else getattr(reason, "strerror", None) or str(reason)
            raise SpecError(f"{field}: the tracking server {uri} does not answer ({text})") from None
    elif scheme in DB_PORTS and parts.hostname:
        if (problem := _connect_problem(parts.hostname, parts.port or DB_PORTS[scheme])) is not None:
            raise SpecError(f"{field}: the tracking database at {parts.hostname} does not answer: {problem}")


def ray_address(spec: SweepSpec, override: str | None) -> tuple[str | None, str]:
    """(the Ray address a launch uses, where it came from): --address, else cluster.address, else RAY_ADDRESS;
    None for a local Ray."""
    if override:
        return override, "--address"
    if spec.cluster.address:
        return spec.cluster.address, "cluster.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_services(spec: SweepSpec, address: str | None, tracking_uri: str) -> None:
    """Before a launch imports Ray or starts anything: the cluster and the tracking server answer."""
    check_cluster(*ray_address(spec, address))
    check_tracking(tracking_uri)
