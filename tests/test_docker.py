"""The Docker images and the compose stack, checked without a Docker engine (CI has none).

hadolint lints the Dockerfiles; the compose file is checked against the invariants the stack relies
on. Compose's own schema check (`docker compose config`) is not run: neither CI nor this machine has a
Compose implementation that knows the current spec (Debian bookworm's docker-compose 1.29 predates it).
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_invariants(dockerfile):
    text = dockerfile.read_text()
    # every inline hadolint ignore carries its reason on the comment lines just above it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line
    for image in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert re.search(r":[\w.-]+$|@sha256:", image) and not image.endswith(":latest"), image
    # installs with the script CI runs, as a non-root user, and says how it is healthy
    assert re.search(r"^RUN .*scripts/install\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*ray health-check", text, re.M)
    assert re.search(r'^CMD \[.*ray start .*--block', text, re.M)


def test_gpu_image_takes_cuda_torch_and_joins_head():
    text = (DOCKER / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-.*runtime", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cu\d+", text, re.M)
    assert "--address=" in text and "RAY_HEAD" in text


def test_cpu_image_is_the_head_with_dashboard_inside_the_network():
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert "--head" in text and "--dashboard-host=0.0.0.0" in text and "--dashboard-port=8265" in text


def test_setup_and_images_share_one_install_script():
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r'^exec "\$\(dirname "\$0"\)/install"$', setup, re.M)
    install = (ROOT / "scripts" / "install").read_text()
    # one resolver call: a single `pip install` of the project
    assert len(re.findall(r'pip install[^\n]*-e "\$project"', install)) == 1
    for dockerfile in DOCKERFILES:
        assert "COPY --chown=" in dockerfile.read_text()
        # the runtime alone in the images: no test tools
        assert re.search(r"^RUN EXTRAS='' .*scripts/install$", dockerfile.read_text(), re.M)


def test_install_pins_torch_variant_from_pyproject(tmp_path):
    """The image's torch is `torch==<pyproject pin>+<variant>` from the PyTorch index of that variant;
    the project comes with its test tools unless EXTRAS is empty (the images)."""
    script = (ROOT / "scripts" / "install").read_text()
    pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    probe = tmp_path / "probe.sh"
    probe.write_text(
        "set -euo pipefail\ncd " + str(ROOT) + "\n" + script.split('if [ ! -x "$VENV/bin/python" ]')[0]
        .split('cd "$(dirname "$0")/.."')[1] + 'printf "%s\\n" "$project" "${extra[@]}"\n')

    def resolved(**env):
        out = subprocess.run(["bash", str(probe)], env={"PATH": "/usr/bin:/bin", **env},
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert resolved(TORCH_VARIANT="cu128") == [
        ".[test]", f"{pin}+cu128", "--extra-index-url", "https://download.pytorch.org/whl/cu128"]
    # TORCH_INDEX empty (scripts/build-images, where that index is out of reach): pip's own sources only
    assert resolved(TORCH_VARIANT="cpu", TORCH_INDEX="", EXTRAS="") == [".", f"{pin}+cpu"]
    assert resolved() == [".[test]"]  # CI and scripts/setup: the pinned torch pip finds, test tools


# ---------------------------------------------------------------- compose


def test_every_service_has_a_pinned_image_and_the_env_file():
    for name, svc in SERVICES.items():
        image = svc.get("image", "")
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), (name, image)
        assert svc.get("env_file") == ".env", name  # docker/.env, next to compose.yaml


def test_published_ports_bind_to_loopback_or_the_env_file():
    published = [p for svc in SERVICES.values() for p in svc.get("ports", [])]
    assert published
    for port in published:
        assert isinstance(port, str) and port.startswith(("127.0.0.1:", "${BIND_ADDRESS}:")), port
    assert ENV_EXAMPLE["BIND_ADDRESS"] == "127.0.0.1"
    dashboard = [p for p in SERVICES["ray-head"]["ports"] if p.endswith(":8265")]
    assert dashboard


def test_every_service_has_a_healthcheck():
    """Compose's own, or the HEALTHCHECK of the Dockerfile the service builds from."""
    for name, svc in SERVICES.items():
        dockerfile = svc.get("build", {}).get("dockerfile")
        in_image = dockerfile and "HEALTHCHECK" in (ROOT / dockerfile).read_text()
        assert svc.get("healthcheck", {}).get("test") or in_image, name
    # the mlflow service reuses the head image, so it must replace that image's Ray probe
    assert "/health" in " ".join(SERVICES["mlflow"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


def test_gpu_workers_reserve_nvidia_gpus_and_scale():
    worker = SERVICES["ray-gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "${GPUS_PER_WORKER}", "capabilities": ["gpu"]}]
    assert worker["deploy"]["replicas"] == "${GPU_WORKERS}"
    assert worker["environment"]["RAY_HEAD"] == "ray-head:6379"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_ray_token_auth_on_every_node():
    for name in ("ray-head", "ray-gpu-worker"):
        assert SERVICES[name]["environment"]["RAY_AUTH_MODE"] == "token", name
    assert ENV_EXAMPLE["RAY_AUTH_TOKEN"]


def test_volumes_declared_and_storage_shared():
    declared = set(COMPOSE["volumes"])
    used = {v.split(":")[0] for svc in SERVICES.values() for v in svc.get("volumes", [])
            if not v.startswith((".", "/"))}
    assert used == declared
    mounts = {name: set(svc.get("volumes", [])) for name, svc in SERVICES.items()}
    assert "ray-storage:/storage" in mounts["ray-head"] & mounts["ray-gpu-worker"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in mounts["postgres"])
    assert any(v.endswith(":/mlflow-artifacts") for v in mounts["mlflow"])


def test_mlflow_on_postgres_with_proxied_artifacts_and_safe_schema():
    mlflow = SERVICES["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    command = " ".join(mlflow["command"])
    assert "python -m orchestrator.tracking_db && exec mlflow server" in command
    assert "--serve-artifacts --artifacts-destination /mlflow-artifacts" in command
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert re.search(r"^postgres:\d+\.\d+", SERVICES["postgres"]["image"])


def test_every_variable_is_in_the_env_example():
    text = (DOCKER / "compose.yaml").read_text()
    needed = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))
    assert needed and needed <= set(ENV_EXAMPLE), needed - set(ENV_EXAMPLE)


def test_secrets_file_is_ignored_by_git_and_docker():
    out = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert out.returncode == 0, "docker/.env must be git-ignored"
    assert "docker/.env" in (ROOT / ".dockerignore").read_text().splitlines()


# ---------------------------------------------------------------- the example's secrets


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_container_starts_through_the_secrets_check(dockerfile):
    assert re.search(r'^ENTRYPOINT \["/app/docker/entrypoint.sh"\]$', dockerfile.read_text(), re.M)


def test_containers_refuse_the_example_secrets_naming_each():
    """docker/.env.example as it ships: the entrypoint says which variables, in one line, and runs nothing."""
    entrypoint = str(DOCKER / "entrypoint.sh")
    env = {"PATH": "/usr/bin:/bin", **ENV_EXAMPLE}
    out = subprocess.run(["sh", entrypoint, "echo", "started"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "error: POSTGRES_PASSWORD, RAY_AUTH_TOKEN: still the change-me placeholder of docker/.env.example; "
        "set a real secret in docker/.env"]

    env.update(RAY_AUTH_TOKEN="0f" * 32)  # one left
    out = subprocess.run(["sh", entrypoint, "echo", "started"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: POSTGRES_PASSWORD: still the change-me")

    env.update(POSTGRES_PASSWORD="a-real-one")  # none left: the command runs, with its arguments
    out = subprocess.run(["sh", entrypoint, "sh", "-c", 'echo "started $0"', "x y"], env=env,
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (0, "started x y\n", "")
