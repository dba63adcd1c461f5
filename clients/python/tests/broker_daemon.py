"""Test helpers: run a real broker daemon (``node bin/broker serve``) in a temp dir."""

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
READY_TIMEOUT = 20.0


def _pump(stream, sink, lines):
    """Read ``stream`` line by line into ``sink`` (a queue or None) and into ``lines``."""
    for line in iter(stream.readline, ""):
        lines.append(line.rstrip("\n"))
        if sink is not None:
            sink.put(line)
    if sink is not None:
        sink.put(None)


class Daemon:
    """One broker daemon. ``url``, ``credentials`` (the parsed credentials.json: url, token, ca),
    ``admin_token`` and ``ca_pem`` are set once it is ready."""

    def __init__(self):
        node = shutil.which("node")
        if node is None:
            print("\nskipping daemon tests: `node` is not on PATH", flush=True)
            raise unittest.SkipTest("`node` is not on PATH: cannot start the broker daemon")
        if not os.path.isdir(os.path.join(REPO, "dist")):
            raise AssertionError(f"{REPO}/dist is missing: run `npm run build` in {REPO} first")
        if not os.path.isfile(os.path.join(REPO, "bin", "broker")):
            raise AssertionError(f"{REPO}/bin/broker is missing")
        self.tmp = tempfile.mkdtemp(prefix="broker-pytest-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        cmd = [node, os.path.join(REPO, "bin", "broker"), "serve", "--data",
               os.path.join(self.tmp, "state"), "--listen", "127.0.0.1:0",
               "--ssh-listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out_lines, self.err_lines = [], []
        lines = queue.Queue()
        self.pumps = [threading.Thread(target=_pump, args=(self.proc.stdout, lines, self.out_lines), daemon=True),
                      threading.Thread(target=_pump, args=(self.proc.stderr, None, self.err_lines), daemon=True)]
        for t in self.pumps:
            t.start()
        try:
            ready = self._wait_ready(lines)
            self.url = ready["url"]
            with open(ready["credentials"], encoding="utf-8") as f:
                self.credentials = json.load(f)
        except BaseException:
            self.stop()
            raise
        self.admin_token = self.credentials["token"]
        self.ca_pem = self.credentials["ca"]

    def _wait_ready(self, lines):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(left, 0.01)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                if self.proc.poll() is not None:
                    for t in self.pumps:  # let stderr drain for the message
                        t.join(2)
                why = "exited" if self.proc.poll() is not None else f"not ready after {READY_TIMEOUT}s"
                raise AssertionError(
                    f"broker daemon {why} (rc={self.proc.poll()}).\nstdout:\n"
                    + "\n".join(self.out_lines[-20:]) + "\nstderr:\n" + "\n".join(self.err_lines[-20:]))
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("msg") == "broker ready":
                return rec

    def log_text(self):
        """Everything the daemon printed so far (stdout and stderr)."""
        return "\n".join(self.out_lines + self.err_lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for t in self.pumps:
            t.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def make_other_ca(tmpdir):
    """A fresh self-signed P-256 CA (not the broker's) -> its PEM text."""
    key, cert = os.path.join(tmpdir, "other-ca.key"), os.path.join(tmpdir, "other-ca.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=not the broker CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    with open(cert, encoding="ascii") as f:
        return f.read()
