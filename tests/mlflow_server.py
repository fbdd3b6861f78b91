"""A real ``mlflow server`` on loopback for tests (SQLite backend, served artifacts).

It can be stopped and started again on the same port and database, which is
how the reliability suite simulates a tracking-server outage.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` in its own process group under ``root``."""

    def __init__(self, root: pathlib.Path, port: int | None = None) -> None:
        self.root = pathlib.Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.root / "server-artifacts"
        self.log_path = self.root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
               "--artifacts-destination", str(self.artifacts), "--serve-artifacts",
               "--workers", "1"]  # fmt: skip
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        "mlflow server did not start: " + self.log_path.read_text()[-2000:]
                    ) from None
                time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """End the whole process group (the server runs uvicorn workers)."""
        if self.proc is None:
            return
        for s, wait in ((sig, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(self.proc.pid, s)
                self.proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None
