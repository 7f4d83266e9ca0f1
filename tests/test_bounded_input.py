"""Every malformed input is refused fast and in one line: exit 2, no traceback, under a 4 GB address-space
limit, within 30 s of CPU time (wall time on a machine shared with other work is bounded too, more loosely:
nothing may hang). The corpus covers what a careless or hostile file can do to a YAML reader (alias bombs,
deep nesting, binary data, huge numbers), to the seeds and the grid, to `data.source`, to memory (configs
no machine can hold) and to services (a cluster or tracking server that is not there)."""

from __future__ import annotations

import resource
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import CLI, ROOT, TINY_BASE, spec_tree
from services import service_env

ADDRESS_SPACE = 4 << 30  # `ulimit -v 4194304`
DEADLINE = 30  # CPU seconds the refusal may cost
HANG = 120  # wall seconds: a refusal that waits on anything (a network probe is 5 s at most) fails the test


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connect is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ALIAS_BOMB = "".join(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "lol"] * 10) + "]\n" for i in range(9))
DEEP = "[" * 20_000 + "]" * 20_000


def spec_text(**overrides) -> str:
    return yaml.safe_dump(spec_tree("bad", **overrides), sort_keys=False)


def base_with(**sections) -> dict:
    return {k: {**TINY_BASE.get(k, {}), **v} for k, v in (TINY_BASE | sections).items()}


def arc_folder(tmp: Path, kind: str) -> str:
    folder = tmp / f"arc-{kind}"
    folder.mkdir()
    if kind == "not-tasks":
        (folder / "notes.txt").write_text("no tasks here")
    elif kind == "challenges-without-solutions":
        (folder / "x_challenges.json").write_text("{}")
    elif kind == "garbage-task":
        (folder / "t1.json").write_text('{"train": 3}')
    return str(folder)


# (case id, command, what the file holds (text, bytes, or a function of tmp_path giving either), a substring
# the error line must contain). `validate` reads a spec; `trial` a trial config (with --set overrides after it).
CASES = [
    # -- YAML itself
    ("spec-alias-bomb-in-base", "validate", "name: bad\nseeds: [0]\nbase:\n" + ALIAS_BOMB, "alias bomb"),
    ("config-alias-bomb", "trial", "bomb:\n" + ALIAS_BOMB, "alias bomb"),
    ("spec-20000-levels", "validate", f"name: bad\nseeds: [0]\nbase: {DEEP}\n", "nested deeper than 64 levels"),
    ("config-20000-levels", "trial", f"train: {DEEP}\n", "nested deeper than 64 levels"),
    ("spec-deep-through-aliases", "validate",
     "a: &a " + "[" * 60 + "1" + "]" * 60 + "\nb: &b " + "[" * 10 + "*a" + "]" * 10 + "\n", "once aliases are expanded"),
    ("spec-recursive-alias", "validate", "name: bad\nseeds: [0]\nbase: &b {data: *b}\n", "refers to the node that contains"),
    ("spec-binary", "validate", bytes(range(256)) * 64, "not UTF-8 text"),
    ("config-binary", "trial", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 16, "not UTF-8 text"),
    ("spec-latin1", "validate", "name: caf\xe9\nseeds: [0]\n".encode("latin-1"), "not UTF-8 text"),
    ("spec-nul-bytes", "validate", b"name: bad\x00\nseeds: [0]\n", "not valid YAML"),
    ("spec-over-1-mib", "validate", "name: bad\nseeds: [0]\ndescription: " + "x" * (1 << 20) + "\n", "larger than 1 MiB"),
    ("spec-5000-digit-integer", "validate", "name: bad\nseeds: [" + "9" * 5000 + "]\n", "not valid YAML"),
    ("spec-duplicate-key", "validate", "name: bad\nseeds: [0]\nseeds: [1]\n", "key 'seeds' appears twice"),
    ("config-duplicate-key", "trial", "train: {steps: 1}\ntrain: {steps: 2}\n", "key 'train' appears twice"),
    ("config-duplicate-nested-key", "trial", "train:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' appears twice"),
    ("spec-unclosed-bracket", "validate", "name: bad\naxes: {train.lr: [0.1\n", "not valid YAML (line"),
    ("spec-python-tag", "validate", "name: !!python/object/apply:os.system ['true']\nseeds: [0]\n", "not valid YAML"),
    ("spec-empty-file", "validate", "", "the top level must be a mapping"),
    ("spec-is-a-directory", "validate", lambda tmp: tmp, "not a regular file"),
    ("spec-device-file", "validate", lambda tmp: Path("/dev/zero"), "not a regular file"),
    # -- seeds and the grid
    ("seed-count-100000", "validate", spec_text(seeds={"count": 100_000}), "1 <= N <= 1000, or {adaptive: {...}} (got 100000)"),
    ("seed-count-1e9", "validate", "name: bad\nseeds: {count: 1e9}\n", "(got '1e9')"),
    ("seed-count-10-to-the-9", "validate", spec_text(seeds={"count": 10**9}), "(got 1000000000)"),
    ("seed-count-float", "validate", spec_text(seeds={"count": 1.0e9}), "(got 1000000000.0)"),
    ("seed-list-too-long", "validate", spec_text(seeds=list(range(5000))), "5000 seeds; at most 1000"),
    ("seed-list-repeat-at-the-end", "validate", spec_text(seeds=list(range(1000))[:-1] + [0]), "seed 0 appears more than once"),
    ("seed-2-to-the-32", "validate", spec_text(seeds=[0, 2**32]), "seeds[1]: Input should be less than 4294967296"),
    ("config-seed-2-to-the-32", "trial", "seed: 4294967296\n", "seed: Input should be less than 4294967296"),
    ("grid-100000-trials", "validate",
     spec_text(axes={"train.lr": [i / 1000 + 1e-4 for i in range(100)], "train.steps": list(range(1, 101)),
                     "model.encoder.final_norm": [True, False]}, seeds=[0, 1, 2, 3, 4]),
     "20,000 cells x 5 seeds = 100,000 trials; a grid has at most 10,000"),
    ("axis-with-20000-values", "validate", spec_text(axes={"train.steps": list(range(1, 20_001))}, contrast=None),
     "axes.train.steps: 20000 values"),
    # -- data.source
    ("source-missing-path", "validate", spec_text(base=base_with(data={"source": "/no/such/tasks"})),
     "is neither synthetic, arc-agi-1, arc-agi-2 nor an existing path"),
    ("source-folder-without-tasks", "validate",
     lambda tmp: spec_text(base=base_with(data={"source": arc_folder(tmp, "not-tasks")})), "no ARC tasks"),
    ("source-challenges-without-solutions", "validate",
     lambda tmp: spec_text(base=base_with(data={"source": arc_folder(tmp, "challenges-without-solutions")})),
     "x_solutions.json is missing"),
    ("config-source-without-tasks", "trial", lambda tmp: f"data: {{source: {arc_folder(tmp, 'not-tasks')}}}\n",
     "no ARC tasks"),
    ("config-source-garbage-task", "trial",
     lambda tmp: yaml.safe_dump(base_with(data={"source": arc_folder(tmp, "garbage-task")})), "not an ARC task file"),
    # -- memory: valid numbers, impossible trials
    ("spec-batch-1e7", "validate", spec_text(base=base_with(train={"batch_size": 10**7})),
     "base.train.batch_size: 2 of 2 cells cannot fit"),
    ("spec-1e9-puzzles", "validate", spec_text(base=base_with(data={"num_train_puzzles": 10**9})),
     "base.data.num_train_puzzles: 2 of 2 cells cannot fit"),
    ("spec-axis-hidden-1e6", "validate",
     spec_text(axes={"model.hidden_size": [16, 10**6], "model.encoder.final_norm": [True, False]}),
     "axes.model.hidden_size[1]: 2 of 4 cells cannot fit"),
    ("config-batch-1e7", "trial", yaml.safe_dump(base_with(train={"batch_size": 10**7})), "train.batch_size: this trial needs"),
    ("config-1e9-puzzles", "trial", yaml.safe_dump(base_with(data={"num_train_puzzles": 10**9})),
     "data.num_train_puzzles: this trial needs"),
    ("config-output-tokens-1e6", "trial", yaml.safe_dump(base_with(model={"encoder": {"output_tokens": 10**6}})),
     "model.encoder.output_tokens: this trial needs"),
    ("config-hidden-1e6", "trial", yaml.safe_dump(base_with(model={"hidden_size": 10**6})), "model.hidden_size: this trial needs"),
    ("config-set-batch-1e7", "trial --set train.batch_size=10000000", yaml.safe_dump(TINY_BASE), "train.batch_size: this trial needs"),
    # -- services that are not there
    ("cluster-address-nothing-listening", "launch", lambda tmp: spec_text(cluster={"address": f"127.0.0.1:{_closed_port()}"}),
     "cluster.address: no Ray cluster at 127.0.0.1:"),
    ("tracking-server-nothing-listening", "launch", lambda tmp: spec_text(tracking={"uri": f"http://127.0.0.1:{_closed_port()}"}),
     "tracking.uri: the tracking server http://127.0.0.1:"),
    ("tracking-database-nothing-listening", "launch",
     lambda tmp: spec_text(tracking={"uri": f"postgresql://u:p@127.0.0.1:{_closed_port()}/db"}),
     "tracking.uri: the tracking database at 127.0.0.1 does not answer"),
]


def test_the_corpus_is_large_and_distinct():
    assert len(CASES) >= 38
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("command, content, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_is_refused_fast_in_one_line(tmp_path, command, content, expected):
    content = content(tmp_path) if callable(content) else content
    if isinstance(content, Path):
        path = content
    else:
        path = tmp_path / "input.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    verb, *options = command.split()
    workspace = tmp_path / "ws"
    env = service_env(ETRM_SWEEP_HOME=str(workspace), COLUMNS="200")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(CLI + [verb, str(path), *options], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG, preexec_fn=_limit_memory)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one problem, one line
    assert expected in lines[0], lines[0]
    assert cpu <= DEADLINE, cpu
    if verb == "launch":  # refused before any local Ray started
        assert not list((workspace / "local-ray").glob("*.json"))
        assert not (workspace / "sweeps" / "bad.yaml").exists()
