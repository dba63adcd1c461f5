"""SECURITY.md NET-2 / SES-3 for the Python client: reaching an https service checks that the
certificate is *that* service's, not just any certificate from the broker CA.

The attacker runs service A (or just holds A's certificate and key) and listens on service B's
port; a client that asked for B must refuse A's certificate.

Run from the repository root (after `npm run build`):
    python3 -m unittest discover -s clients/python/tests -t clients/python -v
"""

import asyncio
import http.server
import json
import os
import random
import shutil
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import broker_daemon  # noqa: E402
from broker_client import BrokerClient, service_hostname  # noqa: E402


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class LocalCA:
    """A throwaway CA (openssl) to make certificates a correct broker never issues: the right
    host name with the wrong CN, so that each check is proven on its own."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.key, self.cert = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.key, "-out", self.cert, "-days", "1", "-subj", "/CN=test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        with open(self.cert, encoding="ascii") as f:
            self.pem = f.read()

    def issue(self, label, cn, dns):
        """A server certificate with common name ``cn`` and one DNS name -> (cert, key) paths."""
        base = os.path.join(self.tmp, label)
        ext = base + ".ext"
        with open(ext, "w", encoding="ascii") as f:
            f.write(f"subjectAltName=DNS:{dns}\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", base + ".key", "-out", base + ".csr",
                "-subj", "/CN=" + cn.replace("/", "\\/"))
        openssl("x509", "-req", "-in", base + ".csr", "-CA", self.cert, "-CAkey", self.key,
                "-CAcreateserial", "-out", base + ".pem", "-days", "1", "-extfile", ext)
        return base + ".pem", base + ".key"


class TLSServer:
    """An HTTPS server on ``host:port`` presenting ``cert``/``key``; answers every GET with
    ``hello``. ``port=0`` picks a free port (``self.port``)."""

    def __init__(self, cert, key, port=0, host="127.0.0.1"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client refusing the certificate hangs up: expected here

        self.httpd = Server((host, port), Hello)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def get(conn):
    """GET / on a connection -> (status, body)."""
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pem_files(tmp, label, tls):
    """Write a register response's ``tls`` cert and key to 0600 files -> (cert, key) paths."""
    paths = []
    for part in ("cert", "key"):
        path = os.path.join(tmp, f"{label}-{part}.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(tls[part])
        paths.append(path)
    return paths


class ServiceIdentityTest(unittest.TestCase):
    """service_connection / service_ssl_context against certificates made to break one check at
    a time (no daemon: a local CA stands in for the broker's)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="broker-pytest-svcid-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.ca = LocalCA(cls.tmp)
        env = {"HOME": cls.tmp, "PATH": os.environ.get("PATH", "")}
        with mock.patch.dict(os.environ, env, clear=True):
            cls.client = BrokerClient(url="https://127.0.0.1:1", ca=cls.ca.pem)

    def serve(self, cn, dns):
        srv = TLSServer(*self.ca.issue(f"leaf{random.randrange(1 << 30)}", cn, dns))
        self.addCleanup(srv.close)
        return srv

    def service_b(self, port):
        return {"id": "svc_0123456789abcdef", "owner": "alice", "name": "b", "mode": "https",
                "host": "127.0.0.1", "port": port, "hostname": "b.alice.localhost"}

    def test_ok_the_right_certificate(self):
        srv = self.serve("alice/b", "b.alice.localhost")
        conn = self.client.service_connection(self.service_b(srv.port))
        self.assertEqual(conn.host, "b.alice.localhost")  # SNI, name check and Host header
        self.assertEqual(get(conn), (200, b"hello"))

    def test_fail_right_host_name_wrong_common_name(self):
        # Host names alone cannot tell A from B when both certificates carry the same name (as
        # every service certificate did: localhost); the CN check does.
        srv = self.serve("alice/a", "b.alice.localhost")
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            get(self.client.service_connection(self.service_b(srv.port)))
        self.assertIn("not for the service alice/b", str(cm.exception))
        self.assertIn("alice/a", cm.exception.verify_message)

    def test_fail_service_a_certificate_on_b_port(self):
        srv = self.serve("alice/a", "a.alice.localhost")
        with self.assertRaises(ssl.SSLCertVerificationError):
            get(self.client.service_connection(self.service_b(srv.port)))

    def test_fail_a_ca_only_context_would_have_accepted_it(self):
        # The control: the same wrong-CN certificate passes ssl_context() (CA + host name only).
        srv = self.serve("alice/a", "b.alice.localhost")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            with self.client.ssl_context().wrap_socket(raw, server_hostname="b.alice.localhost"):
                pass
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            ctx = self.client.service_ssl_context(self.service_b(srv.port))
            with self.assertRaises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname="b.alice.localhost")

    def test_asyncio_uses_the_same_check(self):
        good = self.serve("alice/b", "b.alice.localhost")
        bad = self.serve("alice/a", "b.alice.localhost")

        async def handshake(port):
            ctx = self.client.service_ssl_context(self.service_b(port))
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                      server_hostname="b.alice.localhost")
            writer.close()

        asyncio.run(handshake(good.port))
        with self.assertRaises(ssl.SSLCertVerificationError):
            asyncio.run(handshake(bad.port))

    def test_tcp_services_and_non_services_are_refused(self):
        with self.assertRaisesRegex(ValueError, "tcp service"):
            self.client.service_ssl_context({**self.service_b(1), "mode": "tcp"})
        with self.assertRaisesRegex(ValueError, "service object"):
            self.client.service_connection({"key": "bkk_x"})


class ServiceHostnameTest(unittest.TestCase):
    """service_hostname() is serviceHostname() of src/protocol/names.ts, exactly."""

    def test_examples(self):
        def h(owner, name, sid="svc_0123456789abcdef"):
            return service_hostname({"owner": owner, "name": name, "id": sid})

        self.assertEqual(h("alice", "viz"), "viz.alice.localhost")
        self.assertEqual(h("alice", "a.b"), "svc-0123456789abcdef.localhost")  # dotted name
        self.assertEqual(h("b.c", "a"), "svc-0123456789abcdef.localhost")  # dotted owner
        self.assertEqual(h("al_ice", "viz"), "svc-0123456789abcdef.localhost")
        self.assertEqual(h("alice", "xn--viz"), "svc-0123456789abcdef.localhost")
        self.assertEqual(h("alice", "viz-"), "svc-0123456789abcdef.localhost")
        self.assertEqual(h("alice", "viz\n"), "svc-0123456789abcdef.localhost")
        self.assertEqual(h("alice", "v" * 63), "v" * 63 + ".alice.localhost")
        self.assertEqual(h("alice", "v" * 64), "svc-0123456789abcdef.localhost")
        self.assertEqual(service_hostname({"owner": "alice", "name": "viz", "id": "svc_1"},
                                          "example.org"), "viz.alice.example.org")
        # The broker's own answer wins.
        self.assertEqual(service_hostname({"owner": "alice", "name": "viz", "id": "svc_1",
                                           "hostname": "viz.alice.site.example"}),
                         "viz.alice.site.example")

    def test_same_answers_as_the_typescript_implementation(self):
        node = shutil.which("node")
        names_js = os.path.join(broker_daemon.REPO, "dist", "protocol", "names.js")
        if node is None or not os.path.exists(names_js):
            print("\nSKIPPED TS cross-check: node or dist/ missing", flush=True)
            self.skipTest("needs node and `npm run build`")
        rng = random.Random(11)
        alphabet = string.ascii_lowercase[:6] + "019.-_"
        cases = [("alice", "viz"), ("alice", "xn--a"), ("ab--c", "viz"), ("a", "-"), ("-a", "b"),
                 ("a", "b" * 63), ("a", "b" * 64), ("alice", "viz\n"), ("Alice", "viz")]
        cases += [("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))),
                   "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
                  for _ in range(500)]
        services = [{"owner": o, "name": n, "id": f"svc_{i:016x}"} for i, (o, n) in enumerate(cases)]
        script = ("import { serviceHostname } from " + json.dumps(names_js) + ";\n"
                  "let s = ''; process.stdin.on('data', (c) => (s += c));\n"
                  "process.stdin.on('end', () => console.log(JSON.stringify("
                  "JSON.parse(s).map((x) => serviceHostname(x)))));")
        out = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(services),
                             capture_output=True, text=True, check=True).stdout
        self.assertEqual([service_hostname(s) for s in services], json.loads(out))


class DaemonServiceIdentityTest(unittest.TestCase):
    """Against certificates the real broker issued: two https services, A's certificate
    presented on B's port."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = broker_daemon.Daemon()
        cls.addClassCleanup(cls.daemon.stop)
        cls.tmp = tempfile.mkdtemp(prefix="broker-pytest-svcd-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.client = BrokerClient(cls.daemon.url, cls.daemon.admin_token, cls.daemon.ca_pem)
        cls.reg_a = cls.client.register("pyid-a", mode="https", tunnel="none")
        cls.reg_b = cls.client.register("pyid-b", mode="https", tunnel="none")
        cls.a, cls.b = cls.reg_a["service"], cls.reg_b["service"]

    def serve_on_b(self, reg, label):
        srv = TLSServer(*pem_files(self.tmp, label, reg["tls"]), port=self.b["port"],
                        host=self.b["host"])
        self.addCleanup(srv.close)
        return srv

    def test_the_api_names_each_service(self):
        owner = self.client.owner()
        self.assertEqual(self.b["hostname"], f"pyid-b.{owner}.localhost")
        self.assertEqual(service_hostname({k: v for k, v in self.b.items() if k != "hostname"}),
                         self.b["hostname"])

    def test_fail_a_certificate_on_b_port_is_refused(self):
        self.serve_on_b(self.reg_a, "a-on-b")
        with self.assertRaises(ssl.SSLCertVerificationError):
            get(self.client.service_connection(self.b))
        # Whatever name the certificates carry (today every service certificate names
        # localhost; soon each names only its service), the CN check refuses A as B.
        with socket.create_connection(("127.0.0.1", self.b["port"]), timeout=5) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.client.service_ssl_context(self.b).wrap_socket(raw,
                                                                     server_hostname="localhost")
        # SES-3: even a client checking only the CA and B's host name refuses A's certificate.
        with socket.create_connection(("127.0.0.1", self.b["port"]), timeout=5) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.client.ssl_context().wrap_socket(raw, server_hostname=self.b["hostname"])

    def test_ok_b_certificate_on_b_port_is_accepted_by_its_host_name(self):
        self.serve_on_b(self.reg_b, "b-on-b")
        self.assertEqual(get(self.client.service_connection(self.b)), (200, b"hello"))


if __name__ == "__main__":
    unittest.main()
