"""The Python gate (DESIGN §7) against a real daemon: a socketserver behind GatedRequestHandler."""
import os
import socket
import socketserver
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import broker_daemon  # noqa: E402
from broker_client import BrokerClient, GatedRequestHandler, gate_socket  # noqa: E402


class Echo(GatedRequestHandler, socketserver.BaseRequestHandler):
    def handle(self):
        self.server.reached += 1
        data = self.leftover or self.request.recv(4096)
        self.request.sendall(b"echo:" + data + b"|" + self.principal.encode())


def talk(port, payload, timeout=3):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.sendall(payload)
    out = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
            if b"echo:" in out:
                break
    except socket.timeout:
        pass
    s.close()
    return out


class GateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = broker_daemon.Daemon()
        cls.admin = BrokerClient(url=cls.daemon.url, token=cls.daemon.admin_token, ca=cls.daemon.ca_pem)
        reg = cls.admin.register("pyecho", tunnel="none")
        cls.port = reg["service"]["port"]
        svc = cls.admin.with_token(reg["serviceToken"])

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        cls.server = Server(("127.0.0.1", cls.port), Echo)
        cls.server.broker_client = svc
        cls.server.reached = 0
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        svc.ready("pyecho")

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()
        cls.daemon.stop()

    def test_right_key_gets_ok_and_data(self):
        key = self.admin.load("pyecho")["key"]
        out = talk(self.port, key.encode() + b"\nhello")
        self.assertTrue(out.startswith(b"OK\n"), out)
        self.assertIn(b"echo:hello|", out)

    def test_wrong_missing_and_long_keys_are_denied_and_never_reach_the_app(self):
        before = self.server.reached
        self.assertEqual(talk(self.port, b"bkk_" + b"x" * 43 + b"\nhello"), b"DENIED\n")
        self.assertEqual(talk(self.port, b"no key\nhello"), b"DENIED\n")
        self.assertEqual(talk(self.port, b"a" * 600), b"DENIED\n")
        self.assertEqual(self.server.reached, before)


class NoVerify:
    """A client whose verify must not be reached: no key line is ever complete."""

    def verify(self, key):
        raise AssertionError("verify called without a complete key line")


class GateDeadlineTest(unittest.TestCase):
    """The key line has one deadline, not one per recv: a client dribbling a byte every 0.2 s
    (under the per-recv limit) must still be cut off when ``timeout`` has passed."""

    def test_a_dribbling_client_is_denied_at_the_deadline(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        attacker = socket.create_connection(listener.getsockname())
        self.addCleanup(attacker.close)
        conn, _ = listener.accept()
        stop = threading.Event()

        def dribble():
            try:
                while not stop.is_set():
                    attacker.sendall(b"k")
                    stop.wait(0.2)
            except OSError:
                pass  # the gate hung up: expected

        threading.Thread(target=dribble, daemon=True).start()
        result, done = [], threading.Event()
        started = time.monotonic()

        def gate():
            result.append(gate_socket(conn, NoVerify(), timeout=1.0))
            done.set()

        threading.Thread(target=gate, daemon=True).start()
        finished = done.wait(4.0)
        elapsed = time.monotonic() - started
        stop.set()  # on a per-recv timeout the gate would still be reading here
        self.assertTrue(finished, "the gate was still reading the key line after 4 s (limit 1 s)")
        self.assertLess(elapsed, 2.5)  # 1 s deadline + the 0.5 s drain after DENIED
        self.assertEqual(result, [None])
        attacker.settimeout(3)
        got = b""
        try:
            while b"DENIED\n" not in got:
                chunk = attacker.recv(64)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        self.assertIn(b"DENIED\n", got)


if __name__ == "__main__":
    unittest.main()
