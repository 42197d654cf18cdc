"""A private, throwaway PostgreSQL cluster for tests (and scripts/chaos.py) that stop the server.

The shared test server must never be stopped or restarted, so fault tests that crash
PostgreSQL run their own: `initdb` into a fresh folder, `postgres` on a free port bound to
127.0.0.1 with its socket in that folder, and everything removed by `destroy()`.

initdb and postgres refuse to run as root: as root the binaries run as the `postgres`
user (`runuser`), and the folder is handed to that user. The binaries are found through
$ERRAND_PG_BIN, `pg_config --bindir`, or /usr/lib/postgresql/*/bin (newest first).

`Gate` is a TCP proxy in front of a cluster, for network faults of one client: cut its
connections, refuse it for a while, or lose the answer to a claim that committed.
scripts/chaos.py imports this module too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

SERVER_USER = "postgres"


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no user to run them as root)."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    candidates: list[str] = []
    if os.environ.get("ERRAND_PG_BIN"):
        candidates.append(os.environ["ERRAND_PG_BIN"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                             text=True, check=True, timeout=10).stdout.strip())

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for folder in candidates:
        if folder and all((Path(folder) / tool).is_file()
                          for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; "
                             "set ERRAND_PG_BIN")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgCluster:
    """One private cluster: `start()`, `stop("immediate")`, `restart()`, `destroy()`."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None
                 ) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self.owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise ClusterUnavailable(
                    f"running as root, and there is no {SERVER_USER!r} user to run "
                    "PostgreSQL as") from None
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="errand-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "200",
                         "unix_socket_directories": str(self.socket_dir), **(settings or {})}
        self.socket_dir.mkdir()
        self.log.touch()
        if self.as_root:
            os.chmod(self.root, 0o755)
            for path in (self.root, self.socket_dir, self.log):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self.initialised = False
        self.restarts = 0

    # -- running the server binaries ---------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{name}"

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> PgCluster:
        if not self.initialised:
            self._run("initdb", "-D", str(self.data), "-U", SERVER_USER, "-A", "trust",
                      "-E", "UTF8", "--no-instructions")
            self.initialised = True
        options = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} {options}", "start")
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m immediate` is a crash: no checkpoint, recovery at the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_for: float = 0.0, mode: str = "immediate") -> float:
        """Stop (a crash by default), stay down `down_for` seconds, start; the outage length."""
        began = time.monotonic()
        self.stop(mode)
        time.sleep(down_for)  # holding the fault for its duration
        self.start()
        self.restarts += 1
        return time.monotonic() - began

    def running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def destroy(self) -> None:
        """Stop the server whatever its state, and remove every file."""
        try:
            if self.initialised and self.running():
                try:
                    self.stop("immediate")
                except (RuntimeError, subprocess.SubprocessError):
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; children follow

    # -- helpers for tests -------------------------------------------------------------

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def terminate(self, application_name: str = "errand", database: str | None = None) -> int:
        """pg_terminate_backend on every connection of that application; how many."""
        with psycopg.connect(self.url, autocommit=True, application_name="fault-injector"
                             ) as conn:
            rows = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid() "
                "AND (%s::text IS NULL OR datname = %s::text)",
                (application_name, database, database)).fetchone()
        return int(rows[0]) if rows else 0

    def connections(self, application_name: str = "errand") -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = %s", (application_name,)).fetchone()
        return int(row[0]) if row else 0


@contextlib.contextmanager
def private_cluster(**options: object) -> Iterator[PgCluster]:
    """A started private cluster, destroyed on the way out even after a failure."""
    cluster = PgCluster(**options)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


class Gate:
    """A TCP proxy in front of the cluster, to fail one client's network and not another's.

    `cut()` closes every connection through the gate (as a proxy, a load balancer or a
    failover does: FIN, no PostgreSQL error message); `block()` cuts them and refuses new
    ones until `unblock()`; `accepted` counts the connections made through the gate;
    `lose_next_claim_commit()` lets errand's next claim commit on the server but drops the
    server's answer and cuts the connection: a commit the client never hears of (what a
    network failure at the wrong moment does). The claim may run in autocommit (its answer
    ends with ReadyForQuery 'I': committed) or in a transaction (then the answer to the
    COMMIT that follows is the one lost).
    """

    CLAIM_MARKER = b"SET state = 'enqueued'"
    IDLE = b"Z\x00\x00\x00\x05I"  # ReadyForQuery, not in a transaction
    IN_TRANSACTION = b"Z\x00\x00\x00\x05T"

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.blocked = False
        self.cuts = 0
        self.accepted = 0
        self.claims_to_lose = 0
        self.claims_lost = 0
        self._pairs: dict[socket.socket, _Pair] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pg-gate", daemon=True)
        self._thread.start()

    def url(self, dbname: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def block(self) -> None:
        with self._lock:
            self.blocked = True

    def cut(self) -> None:
        with self._lock:
            self.cuts += 1

    def unblock(self) -> None:
        with self._lock:
            self.blocked = False

    def lose_next_claim_commit(self) -> None:
        with self._lock:
            self.claims_to_lose += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for pair in list(self._pairs.values()):
            pair.close()
        self.listener.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    if key.fileobj is self.listener:
                        self._accept(selector)
                    else:
                        self._pump(selector, key.fileobj)  # type: ignore[arg-type]
                with self._lock:
                    cut, self.cuts = self.blocked or self.cuts > 0, 0
                if cut:
                    for pair in {id(p): p for p in self._pairs.values()}.values():
                        self._drop(selector, pair)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.blocked:
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.accepted += 1
        pair = _Pair(client, server)
        for side in (client, server):
            side.setblocking(True)
            self._pairs[side] = pair
            selector.register(side, selectors.EVENT_READ)

    def _drop(self, selector: selectors.BaseSelector, pair: _Pair) -> None:
        for side in (pair.client, pair.server):
            self._pairs.pop(side, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(side)
        pair.close()

    def _pump(self, selector: selectors.BaseSelector, source: socket.socket) -> None:
        pair = self._pairs.get(source)
        if pair is None:
            return
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(selector, pair)
            return
        if source is pair.client:
            pair.seen = (pair.seen + data)[-4096:]
            with self._lock:
                if not pair.stage and self.CLAIM_MARKER in pair.seen and self.claims_to_lose:
                    self.claims_to_lose -= 1
                    pair.stage = "claim"
                    pair.seen = b""
            if pair.stage == "transaction" and b"COMMIT" in pair.seen:
                pair.stage = "commit"
            target = pair.server
        else:
            if pair.stage in ("claim", "commit"):
                pair.held += data  # hold the answer until it is complete
                if self.IDLE in pair.held:  # committed: the client never hears it
                    self.claims_lost += 1
                    self._drop(selector, pair)
                    return
                if self.IN_TRANSACTION not in pair.held:
                    return
                data, pair.held, pair.stage = pair.held, b"", "transaction"
            target = pair.client
        try:
            target.sendall(data)
        except OSError:
            self._drop(selector, pair)


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.seen = b""
        self.held = b""
        self.stage = ""  # claim -> (transaction -> commit) -> the answer is lost

    def close(self) -> None:
        for side in (self.client, self.server):
            with contextlib.suppress(OSError):
                side.close()


@contextlib.contextmanager
def gate(cluster: PgCluster) -> Iterator[Gate]:
    proxy = Gate(cluster.port)
    try:
        yield proxy
    finally:
        proxy.close()
