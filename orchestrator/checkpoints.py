"""Trial checkpoints keyed by trial id, on storage every node can reach.

A trial's checkpoint lives at `<root>/<trial_id>/` whichever Ray trial, retry or
launch wrote it, so a retried trial (worker died) and a relaunched sweep (driver
died) both resume from the same place. `root` is a local or shared path (NFS, a
Docker volume), written in place, or an object-store URI (`s3://`, `gs://`),
mirrored through a local working folder with pyarrow.fs.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs


class CheckpointStore:
    def __init__(self, root: str):
        if "://" in root:
            self.fs, self.base = pafs.FileSystem.from_uri(root)
            self.local_root: Path | None = None
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
            self.local_root = Path(self.base)
        self.root = root

    def check_writable(self) -> str | None:
        """Why checkpoints cannot be written here (a probe file is written and deleted), or None: asked
        before Ray starts, so unwritable storage fails the launch instead of every trial attempt."""
        probe = f"{self.base}/.etrm-write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.create_dir(self.base, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"probe")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as err:
            return f"cannot write checkpoints to {self.root}: {err}"
        return None

    def workdir(self, trial_id: str) -> Path:
        """A local folder holding the trial's latest checkpoint (if any), where the trainer writes new ones."""
        if self.local_root is not None:
            path = self.local_root / trial_id
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = Path(tempfile.mkdtemp(prefix=f"etrm-{trial_id}-"))
        remote = f"{self.base}/{trial_id}"
        if self.fs.get_file_info(remote).type == pafs.FileType.Directory:
            pafs.copy_files(remote, str(path), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        return path

    def publish(self, trial_id: str, workdir: Path) -> None:
        """Make a freshly written checkpoint visible to every node (a no-op for shared paths)."""
        if self.local_root is not None:
            return
        pafs.copy_files(str(workdir), f"{self.base}/{trial_id}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def read_text(self, trial_id: str, name: str) -> str | None:
        """A file of the trial's folder as published (None if absent)."""
        path = f"{self.base}/{trial_id}/{name}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode(errors="replace")

    def has_checkpoint(self, trial_id: str) -> bool:
        info = self.fs.get_file_info(f"{self.base}/{trial_id}/checkpoint.pt")
        return info.type == pafs.FileType.File
