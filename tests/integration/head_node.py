"""A private Ray head node for tests: bound to 127.0.0.1, its own token and ports, always stopped.

    with start_head_node(num_cpus=2) as head:
        subprocess.run(["ray", "job", "submit", "--address", head.dashboard_url, ...], env=head.env())

`ray start --head --block` runs as the leader of a new session (and process group), so the node's
processes are that session's and their descendants (GCS, raylet, dashboard, agents, workers, job
drivers). Stopping the node signals exactly those, by the group id and by pid, never another Ray
instance on the machine. The node uses token authentication with a token file of its own
(`RAY_AUTH_TOKEN_PATH`), not ~/.ray/auth_token, free ports found by binding to port 0, and a
private temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that nothing listens on right now (the OS picks them)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) of a live process, from /proc/PID/stat; None if gone."""
    try:
        # "pid (comm) state ppid pgrp session ... starttime(22nd)"; comm may hold spaces and parentheses.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def session_processes(sid: int) -> dict[int, int]:
    """{pid: start time} of the live processes in session sid and of all their descendants.

    `ray start` runs as the leader of a new session: its GCS, raylet and dashboard share its process
    group, Ray's workers each get a process group of their own in the same session, and job drivers
    get a session of their own under their JobSupervisor (a descendant)."""
    stats = {int(p.name): _proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    stats = {pid: stat for pid, stat in stats.items() if stat is not None}
    found = {pid: stat[2] for pid, stat in stats.items() if stat[1] == sid}
    while True:
        children = {pid: stat[2] for pid, stat in stats.items() if stat[0] in found and pid not in found}
        if not children:
            return found
        found.update(children)


def command_line(pid: int) -> str:
    """A process's command line as one string (Ray workers show their task: "ray::RayTrainWorker");
    "" once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """(local address, port, pid) of every listening TCP socket that one of pids owns (`ss -ltnpH`)."""
    wanted = set(pids)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    sockets = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        address, _, port = fields[3].rpartition(":")
        for pid in map(int, re.findall(r"pid=(\d+)", fields[5])):
            if pid in wanted:
                sockets.append((address.strip("[]"), int(port), pid))
    return sockets


def client_env(token_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment with token auth from token_path, no other cluster's address or
    token, every Ray process bound to 127.0.0.1, and extra on top."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class HeadNode:
    """A running head node: its addresses, its token and the session of processes that runs it."""

    pgid: int  # `ray start`'s pid: the id of its process group and of its session
    gcs_port: int
    dashboard_port: int
    temp_dir: Path
    token_path: Path

    @property
    def address(self) -> str:
        """The GCS address, for RAY_ADDRESS / ray.init(address=...)."""
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and job API address, for `ray job submit --address`."""
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client of this node (the `ray` CLI, a driver with RAY_ADDRESS=head.address)."""
        return client_env(self.token_path, **extra)

    def pids(self) -> list[int]:
        """The live processes of this node: `ray start`'s session and its descendants."""
        return sorted(session_processes(self.pgid))

    def pids_of(self, fragment: str) -> list[int]:
        """This node's processes whose command line holds fragment (e.g. "raylet", "ray::RayTrainWorker")."""
        return [pid for pid in self.pids() if fragment in command_line(pid)]

    def listening_sockets(self) -> list[tuple[str, int, int]]:
        """(address, port, pid) of every TCP socket this node's processes listen on."""
        return listening_sockets(self.pids())

    def http(self, path: str, *, token: str | None = None, method: str = "GET") -> tuple[int, str]:
        """(status, body) of one request to the dashboard, with `Authorization: Bearer token` if given."""
        request = urllib.request.Request(self.dashboard_url + path, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def _wait_until_ready(head: HeadNode, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until `ray start` reports every process started and the job API answers (with the
    token); fail fast if `ray start` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            with contextlib.suppress(OSError):
                if head.http("/api/jobs/", token=head.token)[0] == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"head node not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _alive(processes: dict[int, int]) -> dict[int, int]:
    """The processes of {pid: start time} that still run (a reused pid has another start time)."""
    return {pid: t for pid, t in processes.items() if (stat := _proc_stat(pid)) is not None and stat[2] == t}


def _signal_all(processes: dict[int, int], sig: signal.Signals) -> None:
    for pid in _alive(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_session(sid: int, *, grace_s: float = 5.0) -> None:
    """SIGTERM `ray start`'s process group and every process of its session and descendants;
    SIGKILL what is left after grace_s seconds. Touches no process outside them.

    A test node keeps nothing worth a graceful shutdown (its GCS can take 30 s to exit on SIGTERM
    on a loaded machine), hence the short grace period."""
    processes = session_processes(sid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGTERM)
    _signal_all(processes, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    processes.update(session_processes(sid))  # anything started while stopping
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)
    _signal_all(processes, signal.SIGKILL)


@contextlib.contextmanager
def start_head_node(
    *, num_cpus: int = 2, ready_timeout: float = 120.0, env: dict[str, str] | None = None
) -> Iterator[HeadNode]:
    """Start `ray start --head --block` on 127.0.0.1 with token auth; stop it on exit, even on error.

    env: extra environment for the node's processes (e.g. RAY_TRAIN_HEALTH_CHECK_INTERVAL_S).
    The temp dir is short (/tmp/rmc-*), as Ray's unix socket paths under it must stay below 108
    characters; it is removed on exit.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="rmc-", dir="/tmp"))
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    names = (
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    )
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    command = [
        "ray",
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--dashboard-host={LOOPBACK}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--temp-dir={temp_dir / 'ray'}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        "--include-dashboard=true",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = temp_dir / "ray-start.log"
    # RAY_ADDRESS pins every process of the node (drivers, Train's state-API helpers) to this
    # cluster; otherwise Ray's auto-detection may find other local clusters' GCS processes.
    node_env = client_env(token_path, RAY_ADDRESS=f"{LOOPBACK}:{ports['port']}", PYTHONUNBUFFERED="1")
    node_env.update(env or {})
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command,
            env=node_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    head = HeadNode(
        pgid=process.pid,
        gcs_port=ports["port"],
        dashboard_port=ports["dashboard-port"],
        temp_dir=temp_dir,
        token_path=token_path,
    )
    try:
        _wait_until_ready(head, process, log, ready_timeout)
        yield head
    finally:
        stop_session(head.pgid)
        process.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
