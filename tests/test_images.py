"""The stack's images, built by scripts/build-images and started for real (marker `images`; CI runs it after
the other tiers: `scripts/test -m images`).

There is no Docker engine here: `buildah run --isolation chroot --network host` runs an image's entrypoint
and command as processes of this machine, on its network. That is what a container of the compose stack
runs, except that everything binds to 127.0.0.1 on free ports instead of the container network's fixed
ones (the image's command is used with those flags swapped, and the swap must match). In one test:
- the example's change-me secrets are refused, naming the variables;
- a Ray head from the CPU image with token auth, and a worker from the worker image (Dockerfile.gpu,
  built with the CPU torch: its CUDA torch cannot be fetched here) joining it with the token;
- MLflow from the CPU image on a real PostgreSQL, its schema made first, as compose runs it;
- `etrm-sweep launch` run on the head: its trials run on the worker, land in that MLflow, the Ray job is
  named after the sweep in the dashboard, and the log has a line per trial event.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness import TINY_BASE
from services import _http_ok, alive, descendants, free_port, kill_pids, pids_mentioning, session_members, start_postgres, wait_until

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]  # the fixture builds two images first

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
HEAD_IMAGE = f"etrm-sweep-cpu:{VERSION}"
WORKER_IMAGE = f"etrm-sweep-gpu:{VERSION}-cpu-torch"
ENV_EXAMPLE = dict(line.split("=", 1) for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Both images, built (or found up to date in buildah's layer cache) by scripts/build-images."""
    log = tmp_path_factory.mktemp("build") / "build-images.log"
    for kind, env in (("cpu", {}), ("gpu", {"TORCH_VARIANT_GPU": "cpu", "TAG_SUFFIX": "-cpu-torch"})):
        with open(log, "a") as out:
            built = subprocess.run([str(ROOT / "scripts" / "build-images"), kind], env={**os.environ, **env},
                                   stdout=out, stderr=subprocess.STDOUT, timeout=2400)
        assert built.returncode == 0, log.read_text()[-6000:]
    return log


def swap(command: str, old: str, new: str) -> str:
    assert old in command, f"{old!r} is no longer in the image's command {command!r}: update this test"
    return command.replace(old, new)


def ray_ports() -> str:
    """Every port a Ray node would otherwise take at a fixed default: free ones, so nothing collides here."""
    return " ".join(f"--{name}={free_port()}" for name in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port"))


@dataclass
class Container:
    """A working container of an image: start() is `docker run` (entrypoint + command), exec() `docker exec`."""

    image: str
    name: str
    log_dir: Path
    volumes: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self):
        subprocess.run(["buildah", "rm", self.name], capture_output=True)  # left by an interrupted run
        subprocess.run(["buildah", "from", "--pull=never", "--name", self.name, self.image],
                       check=True, capture_output=True)
        config = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", self.image],
                                           check=True, capture_output=True, text=True).stdout)["Docker"]["config"]
        self.entrypoint, self.cmd = config["Entrypoint"] or [], config["Cmd"] or []
        self.healthcheck = (config.get("Healthcheck") or {}).get("Test") or []

    def _run(self, argv: list[str], env: dict[str, str]) -> list[str]:
        flags = [f"--env={k}={v}" for k, v in env.items()] + [f"--volume={h}:{c}" for h, c in self.volumes.items()]
        return ["buildah", "run", "--isolation", "chroot", "--network", "host", *flags, self.name, "--", *argv]

    def start(self, shell_command: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log = self.log_dir / f"{self.name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(self._run([*self.entrypoint, "/bin/sh", "-c", shell_command], env),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def exec(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """Run argv in the container; past timeout, end it (its whole session) and return exit code -9."""
        proc = subprocess.Popen(self._run(argv, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_pids(session_members(proc.pid) | descendants(proc.pid), grace=1)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -9, out, err + f"\n(ended after {timeout} s)")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self, marker: str) -> None:
        for _ in range(2):  # MLflow's uvicorn outlives its parent, re-parented to init but in the same session
            pids = set().union(*(descendants(p.pid) | session_members(p.pid) for p in self.procs))
            kill_pids({p for p in pids | pids_mentioning(marker) if alive(p)})
        subprocess.run(["buildah", "rm", self.name], capture_output=True)


def live_nodes(head: Container, env: dict[str, str], address: str) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='error', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = head.exec(["python", "-c", probe], env, timeout=180)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1


def test_stack_images_run_a_sweep_end_to_end(images, tmp_path):
    marker = f"etrm-smoke-{secrets.token_hex(4)}"  # in every Ray temp dir: how the test finds what to end
    share = Path(tempfile.mkdtemp(prefix=f"{marker}-", dir="/tmp"))  # uid 1000 in the images writes here
    for sub in ("storage", "artifacts", "sweeps"):
        (share / sub).mkdir()
    os.chmod(share, 0o755)
    for sub in ("storage", "artifacts"):
        os.chmod(share / sub, 0o777)
    token = secrets.token_hex(32)
    pg = start_postgres()
    env_file = {**ENV_EXAMPLE, "RAY_AUTH_TOKEN": token, "POSTGRES_PASSWORD": pg.password,
                "POSTGRES_USER": pg.user, "POSTGRES_DB": "mlflow"}
    ray_env = {**env_file, **COMPOSE["x-ray-env"]}
    containers: list[Container] = []
    try:
        head = Container(HEAD_IMAGE, f"{marker}-head", tmp_path,
                         {str(share / "storage"): "/storage", str(share / "sweeps"): "/app/sweeps-smoke"})
        mlflow = Container(HEAD_IMAGE, f"{marker}-mlflow", tmp_path, {str(share / "artifacts"): "/mlflow-artifacts"})
        worker = Container(WORKER_IMAGE, f"{marker}-worker", tmp_path, {str(share / "storage"): "/storage"})
        containers += [head, mlflow, worker]

        # 1. The example's secrets, unchanged: refused before anything starts, the variables named.
        refused, log = head.start(head.cmd[-1], ENV_EXAMPLE)
        assert refused.wait(timeout=120) == 2, log.read_text()
        # buildah adds its own lines on how the command ended
        said = [line for line in log.read_text().splitlines() if not re.match(r"(subprocess exited|Error: exit)", line)]
        assert said == [
            "error: POSTGRES_PASSWORD, RAY_AUTH_TOKEN: still the change-me placeholder of docker/.env.example; "
            "set a real secret in docker/.env"]

        # 2. The Ray head: the image's command, with token auth, on loopback.
        gcs_port, dashboard_port = free_port(), free_port()
        address = f"127.0.0.1:{gcs_port}"
        command = swap(swap(swap(head.cmd[-1], "--port=6379", f"--port={gcs_port}"),
                            "--dashboard-host=0.0.0.0", "--dashboard-host=127.0.0.1"),
                       "--dashboard-port=8265", f"--dashboard-port={dashboard_port}")
        command += (f" --node-ip-address=127.0.0.1 --temp-dir=/tmp/{marker} --ray-client-server-port={free_port()} "
                    f"{ray_ports()}")
        head_proc, head_log = head.start(command, {**ray_env, "RAY_RESOURCES": "{}"})
        assert head.healthcheck[:1] == ["CMD"]
        healthcheck = swap(head.healthcheck[-1], "127.0.0.1:6379", address)
        wait_until(lambda: head.exec(["/bin/sh", "-c", healthcheck], ray_env, 60).returncode == 0, 600,
                   "ray head healthy", head_proc, head_log)

        # 3. A worker from the worker image joins with the token.
        command = worker.cmd[-1] + f" --node-ip-address=127.0.0.1 --num-cpus=2 --temp-dir=/tmp/{marker} {ray_ports()}"
        worker_proc, worker_log = worker.start(command, {**ray_env, "RAY_HEAD": address, "RAY_RESOURCES": "{}"})

        def joined() -> bool:
            assert head_proc.poll() is None, f"the Ray head exited:\n{head_log.read_text()[-3000:]}"
            return live_nodes(head, ray_env, address) == 2

        wait_until(joined, 600, "worker joining", worker_proc, worker_log)

        # 4. MLflow on PostgreSQL: the compose service's command, on loopback (started after the Ray nodes:
        # everything at once on 2 cores can keep a raylet from registering within Ray's 30 s).
        mlflow_port = free_port()
        service = COMPOSE["services"]["mlflow"]
        command = swap(service["command"][-1], "--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {mlflow_port}")
        mlflow_env = {**env_file, **service["environment"], "MLFLOW_BACKEND_STORE_URI": pg.url(),
                      "MLFLOW_SERVER_ALLOWED_HOSTS": "127.0.0.1:*,localhost:*"}
        server, server_log = mlflow.start(command, mlflow_env)
        tracking = f"http://127.0.0.1:{mlflow_port}"
        wait_until(lambda: _http_ok(f"{tracking}/health"), 600, "mlflow server", server, server_log)

        # 5. A tiny sweep launched on the head (compose: `docker compose exec ray-head etrm-sweep launch ...`).
        spec = {"name": "smoke", "base": {**TINY_BASE, "train": {**TINY_BASE["train"], "threads": 1}},
                "seeds": [0, 1], "metrics": ["eval/exact_accuracy", "train/lm_loss"],
                "resources": {"cpu": 1}, "max_concurrent": 2, "max_failures": 0,
                "cluster": {"storage": "/storage"}}
        (share / "sweeps" / "smoke.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        launch = head.exec(["etrm-sweep", "launch", "/app/sweeps-smoke/smoke.yaml", "--address", address],
                           {**ray_env, "MLFLOW_TRACKING_URI": tracking, "ETRM_SWEEP_HOME": "/tmp/smoke-ws"},
                           timeout=900)
        output = launch.stdout + launch.stderr
        (tmp_path / "launch.log").write_text(output)
        assert launch.returncode == 0, output[-6000:]
        lines = output.splitlines()
        assert sum(line[9:].startswith("started ") for line in lines) == 2, output
        assert sum(line[9:].startswith("finished ") for line in lines) == 2, output
        assert "View run" not in output, output

        # The runs are in the MLflow of the stack, on PostgreSQL; the trials ran on the worker.
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("smoke")
        trials = client.search_runs([experiment.experiment_id], "tags.`etrm.role` = 'trial'")
        assert sorted(r.data.tags["etrm.seed"] for r in trials) == ["0", "1"]
        assert all(r.data.tags["etrm.status"] == "finished" and r.info.status == "FINISHED" for r in trials)
        assert all("eval/exact_accuracy" in r.data.metrics for r in trials)
        head_node = head.exec(["python", "-c", "import ray; ray.init(address=%r, logging_level='error'); "
                               "print(ray.get_runtime_context().get_node_id())" % address], ray_env, 120)
        assert head_node.returncode == 0, head_node.stderr
        assert {r.data.tags["etrm.node_id"] for r in trials}.isdisjoint({head_node.stdout.split()[-1]})

        # The dashboard (token required) lists the sweep's job by the sweep's name; MLflow knows the job.
        parent = client.search_runs([experiment.experiment_id], "tags.`etrm.role` = 'sweep'")[0]
        jobs = dashboard_jobs(dashboard_port, token)
        named = [j for j in jobs if (j.get("metadata") or {}).get("job_name") == "smoke"]
        assert len(named) == 1, jobs
        assert named[0]["job_id"] == parent.data.tags["etrm.ray_job_id"]
        assert named[0]["metadata"]["etrm.experiment"] == "smoke"
        with pytest.raises(urllib.error.HTTPError) as no_token:
            dashboard_jobs(dashboard_port, None)
        assert no_token.value.code in (401, 403)
    finally:
        for container in containers:
            container.stop(marker)
        pg.stop()
        shutil.rmtree(share, ignore_errors=True)


def dashboard_jobs(port: int, token: str | None) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())

