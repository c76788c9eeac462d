"""A throw-away local MAOSIC for tests and notebooks: the real ``maosic-server`` on a random port
with a fresh SQLite database, and ``maosic-agent`` on the virtual lab with a fast clock, enrolled
with a one-time token. Needs the two binaries (``cargo build --workspace --bins``)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from .client import Client


def default_bin_dir() -> Path:
    """``$MAOSIC_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else ``/var/tmp/maosic-target/debug``."""
    if os.environ.get("MAOSIC_BIN_DIR"):
        return Path(os.environ["MAOSIC_BIN_DIR"])
    return Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/maosic-target")) / "debug"


def _binary(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it first (cargo build --workspace --bins)")
    return str(path)


def _mailed_token(outbox: Path, email: str, timeout_s: float = 10.0) -> Optional[str]:
    """The verification token mailed to ``email`` by the development mailer (one JSON object
    per line in ``outbox``), waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if outbox.exists():
            for line in outbox.read_text().splitlines():
                try:
                    mail = json.loads(line)
                except ValueError:
                    continue
                if mail.get("to") != email:
                    continue
                for word in str(mail.get("body", "")).split():
                    if word.startswith("mvt_"):
                        return word
        time.sleep(0.05)
    return None


def virtual_lab_config(template: Path, out: Path, speed: float, seed: int) -> Path:
    """A copy of the virtual-lab agent configuration with its clock at ``speed``× and ``seed``."""
    lines = []
    for line in template.read_text().splitlines():
        stripped = line.lstrip()
        if stripped.startswith("speed ="):
            line = f"speed = {speed:.1f}"
        elif stripped.startswith("seed ="):
            line = f"seed = {seed}"
        lines.append(line)
    out.write_text("\n".join(lines) + "\n")
    return out


@dataclass
class LocalLab:
    """A running server + virtual-lab agent. Use as a context manager (stops both on exit)."""

    url: str
    client: Client
    email: str
    password: str
    organization_id: str
    lab_id: str
    directory: Path
    _procs: list["subprocess.Popen[Any]"] = field(default_factory=list)
    _files: list[IO[Any]] = field(default_factory=list)
    _tmp: Optional[tempfile.TemporaryDirectory[str]] = None

    def __enter__(self) -> "LocalLab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for p in reversed(self._procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self._procs.clear()
        for f in self._files:
            f.close()
        self.client.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def start_local_lab(
    repo: Path,
    *,
    bin_dir: Optional[Path] = None,
    speed: float = 1000.0,
    seed: int = 11,
    directory: Optional[Path] = None,
) -> LocalLab:
    """Starts ``maosic-server serve`` on 127.0.0.1:0 (its URL read from its ``listening`` line),
    signs up an account, creates a lab, enrolls ``maosic-agent`` with a one-time token and runs
    it on ``repo/examples/agent-lab-virtual.toml`` at ``speed``× real time (1000×, as the
    end-to-end tests: at 5000× on a loaded machine the agent refused programs now and then); returns when the lab
    is online. ``directory`` keeps the database and logs (default: a temporary directory)."""
    bins = bin_dir or default_bin_dir()
    server_bin, agent_bin = _binary(bins, "maosic-server"), _binary(bins, "maosic-agent")
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="maosic-local-")
        directory = Path(tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    outbox = directory / "outbox.jsonl"
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
        # The development mailer: verification mail is appended to this file.
        "MAOSIC_MAIL__OUTBOX_FILE": str(outbox),
    }
    server_log = open(directory / "server.log", "w")
    server = subprocess.Popen(
        [server_bin, "serve", "--bind", "127.0.0.1:0", "--database",
         f"sqlite://{directory / 'maosic.db'}"],
        stdout=subprocess.PIPE, stderr=server_log, text=True, env=env, cwd=directory,
    )
    procs: list[subprocess.Popen[Any]] = [server]
    files: list[IO[Any]] = [server_log]

    def fail(message: str) -> None:
        for p in procs:
            p.kill()
        for f in files:
            f.close()
        if tmp is not None:
            tmp.cleanup()
        raise RuntimeError(message)

    url = None
    assert server.stdout is not None
    seen = []
    for line in server.stdout:
        seen.append(line)
        prefix = "maosic-server listening on "
        if line.startswith(prefix):
            url = line[len(prefix):].strip()
            break
    if url is None:
        fail(f"maosic-server exited before listening: {''.join(seen)} (log: {directory / 'server.log'})")
    assert url is not None
    out = server.stdout
    # Keep draining stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in out], daemon=True).start()

    email = f"local-{uuid.uuid4().hex[:8]}@maosic.test"
    password = uuid.uuid4().hex
    Client.sign_up(url, email, password, "Local researcher", "Local group")
    token = _mailed_token(outbox, email)
    if token is None:
        fail(f"no verification mail to {email} in {outbox}")
    assert token is not None
    client = Client.verify_email(url, token)
    org = client.me().organizations[0].id
    lab = client.create_lab(org, "virtual-lab")
    token = client.create_enrollment_token(lab.id)
    credential = directory / "credential.json"
    enrolled = subprocess.run(
        [agent_bin, "enroll", "--server", url, "--token", token, "--credential-out", str(credential)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    if enrolled.returncode != 0:
        fail(f"maosic-agent enroll failed: {enrolled.stderr}")
    config = virtual_lab_config(
        repo / "examples/agent-lab-virtual.toml", directory / "agent-lab.toml", speed, seed
    )
    agent_log = open(directory / "agent.log", "w")
    files.append(agent_log)
    procs.append(
        subprocess.Popen(
            [agent_bin, "run", "--server", url, "--credential", str(credential), "--lab",
             str(config), "--spool", str(directory / "spool.db")],
            stdout=subprocess.DEVNULL, stderr=agent_log, env=env,
        )
    )
    local = LocalLab(
        url=url, client=client, email=email, password=password, organization_id=org,
        lab_id=lab.id, directory=directory, _procs=procs, _files=files, _tmp=tmp,
    )
    try:
        client.wait_lab_online(lab.id, timeout=60)
    except Exception:
        local.stop()
        raise
    return local
