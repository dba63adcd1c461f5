"""Tests of the Python broker client: discovery (no daemon) and the API against a real daemon.

Run from the repository root (after `npm run build`):
    python3 -m unittest discover -s clients/python/tests -t clients/python -v
"""

import json
import os
import secrets
import socket
import ssl
import string
import sys
import tempfile
import time
import shutil
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import broker_daemon  # noqa: E402
from broker_client import BrokerClient, BrokerError, discover_credentials  # noqa: E402

ALPHABET = string.ascii_letters + string.digits + "_-"


def fake_secret(prefix):
    """A well-formed but unknown token/key (prefix + 43 chars of the nanoid alphabet)."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(43))


def write_json(path, data, mode=0o600):
    """A credentials file as a user writes it: private (0600) unless ``mode`` says otherwise."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.chmod(path, mode)  # the test's set-up, whatever the umask


def other_user():
    """(uid, gid) of another user for chown (bt-mallory when the TS tests created her), or None
    when this process cannot chown (not root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd
    try:
        pw = pwd.getpwnam("bt-mallory")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534  # nobody


def core(found):
    """url, token and ca_pem of a discovery (the fields of DESIGN §3; urls and login are
    checked by SiteConfigTest)."""
    return {k: found[k] for k in ("url", "token", "ca_pem")}


class DiscoveryTest(unittest.TestCase):
    """discover_credentials(): explicit -> env -> user config -> daemon state, per field."""

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(prefix="broker-pytest-ca-")
        cls.addClassCleanup(shutil.rmtree, tmp, True)
        cls.real_pem = broker_daemon.make_other_ca(tmp)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="broker-pytest-disc-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)
        self.env = {"HOME": self.home, "PATH": os.environ.get("PATH", "")}

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def discover(self, extra_env=None, **kw):
        with mock.patch.dict(os.environ, {**self.env, **(extra_env or {})}, clear=True):
            return core(discover_credentials(**kw))

    def ca_file(self, name, text):
        p = self.path(name)
        with open(p, "w", encoding="ascii") as f:
            f.write(text)
        return p

    def test_nothing_found(self):
        self.assertEqual(self.discover(), {"url": None, "token": None, "ca_pem": None})

    def test_explicit_beats_everything(self):
        write_json(self.path("cfg", "broker", "credentials.json"), {"url": "https://cfg", "token": "cfg", "ca": "-----BEGIN CERTIFICATE-----\nPEM cfg"})
        env = {"BROKER_URL": "https://env", "BROKER_TOKEN": "env", "BROKER_CA": self.ca_file("env.pem", "-----BEGIN CERTIFICATE-----\nPEM env"),
               "XDG_CONFIG_HOME": self.path("cfg")}
        got = self.discover(env, url="https://arg", token="arg", ca="-----BEGIN CERTIFICATE-----\narg")
        self.assertEqual(got, {"url": "https://arg", "token": "arg", "ca_pem": "-----BEGIN CERTIFICATE-----\narg"})

    def test_explicit_ca_may_be_a_path(self):
        p = self.ca_file("arg.pem", "-----BEGIN CERTIFICATE-----\nfile")
        self.assertEqual(self.discover(ca=p)["ca_pem"], "-----BEGIN CERTIFICATE-----\nfile")

    def test_env_beats_files_and_broker_ca_is_a_path(self):
        write_json(self.path("cfg", "broker", "credentials.json"), {"url": "https://cfg", "token": "cfg", "ca": "-----BEGIN CERTIFICATE-----\nPEM cfg"})
        env = {"BROKER_URL": "https://env", "BROKER_TOKEN": "env", "BROKER_CA": self.ca_file("env.pem", "-----BEGIN CERTIFICATE-----\nPEM from file"),
               "XDG_CONFIG_HOME": self.path("cfg")}
        self.assertEqual(self.discover(env), {"url": "https://env", "token": "env", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM from file"})

    def test_empty_env_values_are_ignored(self):
        write_json(self.path("cfg", "broker", "credentials.json"), {"url": "https://cfg", "token": "cfg", "ca": "-----BEGIN CERTIFICATE-----\nPEM cfg"})
        env = {"BROKER_URL": "", "BROKER_TOKEN": "", "BROKER_CA": "", "XDG_CONFIG_HOME": self.path("cfg")}
        self.assertEqual(self.discover(env), {"url": "https://cfg", "token": "cfg", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM cfg"})

    def test_user_config_beats_daemon_state(self):
        write_json(self.path("cfg", "broker", "credentials.json"), {"url": "https://cfg", "token": "cfg", "ca": "-----BEGIN CERTIFICATE-----\nPEM cfg"})
        write_json(self.path("data", "credentials.json"), {"url": "https://st", "token": "st", "ca": "-----BEGIN CERTIFICATE-----\nPEM st"})
        env = {"XDG_CONFIG_HOME": self.path("cfg"), "BROKER_DATA": self.path("data")}
        self.assertEqual(self.discover(env), {"url": "https://cfg", "token": "cfg", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM cfg"})

    def test_each_field_resolved_on_its_own(self):
        write_json(self.path("cfg", "broker", "credentials.json"), {"url": "https://cfg"})
        write_json(self.path("data", "credentials.json"), {"url": "https://st", "token": "st-admin", "ca": "-----BEGIN CERTIFICATE-----\nPEM st"})
        env = {"BROKER_TOKEN": "bks_service", "XDG_CONFIG_HOME": self.path("cfg"), "BROKER_DATA": self.path("data")}
        self.assertEqual(self.discover(env), {"url": "https://cfg", "token": "bks_service", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM st"})

    def test_default_paths_under_home(self):
        write_json(os.path.join(self.home, ".config", "broker", "credentials.json"), {"token": "cfg"})
        write_json(os.path.join(self.home, ".local", "state", "broker", "credentials.json"),
                   {"url": "https://st", "token": "st", "ca": "-----BEGIN CERTIFICATE-----\nPEM st"})
        self.assertEqual(self.discover(), {"url": "https://st", "token": "cfg", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM st"})

    def test_xdg_state_home(self):
        write_json(self.path("xstate", "broker", "credentials.json"), {"url": "https://xs", "token": "xs", "ca": "-----BEGIN CERTIFICATE-----\nPEM xs"})
        write_json(os.path.join(self.home, ".local", "state", "broker", "credentials.json"), {"url": "https://home"})
        got = self.discover({"XDG_STATE_HOME": self.path("xstate")})
        self.assertEqual(got, {"url": "https://xs", "token": "xs", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM xs"})

    def test_broker_data_beats_xdg_state_home(self):
        write_json(self.path("data", "credentials.json"), {"url": "https://data"})
        write_json(self.path("xstate", "broker", "credentials.json"), {"url": "https://xs", "token": "xs"})
        got = self.discover({"BROKER_DATA": self.path("data"), "XDG_STATE_HOME": self.path("xstate")})
        self.assertEqual(got, {"url": "https://data", "token": None, "ca_pem": None})

    def test_client_needs_url_and_ca_and_https(self):
        with mock.patch.dict(os.environ, self.env, clear=True):
            with self.assertRaisesRegex(ValueError, "URL"):
                BrokerClient(ca=self.real_pem)
            with self.assertRaisesRegex(ValueError, "CA"):
                BrokerClient(url="https://127.0.0.1:1")
            with self.assertRaisesRegex(ValueError, "https"):
                BrokerClient(url="http://127.0.0.1:1", ca=self.real_pem)

    def test_client_context_and_repr(self):
        with mock.patch.dict(os.environ, self.env, clear=True):
            c = BrokerClient(url="https://127.0.0.1:1/v1/", token="bku_secret", ca=self.real_pem)
        self.assertEqual(c.url, "https://127.0.0.1:1")
        self.assertNotIn("bku_secret", repr(c))
        ctx = c.ssl_context()
        self.assertEqual(ctx.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(ctx.check_hostname)
        self.assertGreaterEqual(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(len(ctx.get_ca_certs()), 1)  # the pinned CA only, no system roots


class SiteConfigTest(unittest.TestCase):
    """Issue 12: the site client config (after the user's and the daemon's files; urls; a CA
    path relative to it; never a token), and tokens a login cached (only for their broker, only
    until they expire). Mirrors test/unit/credentials.test.ts."""

    PEM = "-----BEGIN CERTIFICATE-----\nsite\n-----END CERTIFICATE-----\n"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="broker-pytest-site-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.site = os.path.join(self.tmp, "site", "client.json")
        self.user = os.path.join(self.tmp, "cfg", "broker", "credentials.json")
        self.env = {"HOME": self.tmp, "PATH": os.environ.get("PATH", ""),
                    "XDG_CONFIG_HOME": os.path.join(self.tmp, "cfg"),
                    "XDG_STATE_HOME": os.path.join(self.tmp, "st"), "BROKER_CLIENT_CONFIG": self.site}

    def discover(self, **env):
        with mock.patch.dict(os.environ, {**self.env, **env}, clear=True):
            return discover_credentials()

    def write_site(self, doc, mode=0o644):
        os.makedirs(os.path.dirname(self.site), exist_ok=True)
        os.chmod(os.path.dirname(self.site), 0o755)
        write_json(self.site, doc, mode)

    def test_site_urls_and_a_ca_path_relative_to_it_and_no_token(self):
        self.write_site({"urls": ["https://a:1", "https://b:2"], "ca": "ca.pem", "token": "bku_site"})
        with open(os.path.join(self.tmp, "site", "ca.pem"), "w", encoding="ascii") as f:
            f.write(self.PEM)
        got = self.discover()
        self.assertEqual((got["url"], got["urls"], got["ca_pem"], got["token"]),
                         ("https://a:1", ["https://a:1", "https://b:2"], self.PEM, None))
        write_json(self.user, {"token": "bku_user"})
        self.assertEqual(self.discover()["token"], "bku_user")

    def test_a_site_config_others_can_write_is_refused(self):
        self.write_site({"urls": ["https://a:1"], "ca": self.PEM}, 0o666)
        with self.assertRaises(BrokerError) as cm:
            self.discover()
        self.assertEqual(cm.exception.code, "insecure_path")
        self.assertIn(self.site, cm.exception.message)

    def test_a_cached_login_token_only_for_its_broker_and_until_it_expires(self):
        self.write_site({"urls": ["https://a:1", "https://b:2"], "ca": self.PEM})
        later = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600))
        earlier = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 10))
        write_json(self.user, {"token": "bku_b", "login": {"url": "https://b:2", "expiresAt": later}})
        self.assertEqual(self.discover()["token"], "bku_b")
        self.assertIsNone(self.discover(BROKER_URL="https://c:3")["token"])
        write_json(self.user, {"token": "bku_b", "login": {"url": "https://a:1", "expiresAt": earlier}})
        self.assertIsNone(self.discover()["token"])


class CredentialFileModeTest(unittest.TestCase):
    """FS-5: a credentials file holds a token; like ssh with a private key, the client refuses
    one that group/other may read or write, or that another user owns, and says the fix."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="broker-pytest-mode-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cfg = os.path.join(self.tmp, "cfg")
        self.path = os.path.join(self.cfg, "broker", "credentials.json")
        self.env = {"HOME": self.tmp, "PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": self.cfg}

    def discover(self):
        with mock.patch.dict(os.environ, self.env, clear=True):
            return core(discover_credentials())

    def refused(self, fn):
        with mock.patch.dict(os.environ, self.env, clear=True):
            with self.assertRaises(BrokerError) as cm:
                fn()
        self.assertEqual(cm.exception.code, "insecure_path")
        self.assertIn(self.path, cm.exception.message)
        self.assertNotIn("bku_secret", str(cm.exception))
        return cm.exception

    def test_group_or_other_access_is_refused_with_the_chmod(self):
        for mode in (0o644, 0o640, 0o604, 0o620, 0o666):
            with self.subTest(mode=oct(mode)):
                write_json(self.path, {"url": "https://cfg", "token": "bku_secret", "ca": "-----BEGIN CERTIFICATE-----\nPEM"}, mode)
                err = self.refused(discover_credentials)
                self.assertIn(f"chmod 600 {self.path}", err.message)
                self.refused(lambda: BrokerClient(ca="-----BEGIN CERTIFICATE-----\nx"))

    def test_private_files_are_used(self):
        for mode in (0o600, 0o400):
            with self.subTest(mode=oct(mode)):
                write_json(self.path, {"url": "https://cfg", "token": "bku_secret", "ca": "-----BEGIN CERTIFICATE-----\nPEM"}, mode)
                self.assertEqual(self.discover(), {"url": "https://cfg", "token": "bku_secret", "ca_pem": "-----BEGIN CERTIFICATE-----\nPEM"})

    def test_a_file_of_another_user_is_refused(self):
        other = other_user()
        if other is None:
            print("\nSKIPPED chown case: needs root", flush=True)
            self.skipTest("chown to another user needs root")
        write_json(self.path, {"url": "https://mallory", "token": "bku_secret", "ca": "-----BEGIN CERTIFICATE-----\nPEM"})
        os.chown(self.path, *other)
        err = self.refused(discover_credentials)
        self.assertIn(f"owned by uid {other[0]}", err.message)


class DaemonTest(unittest.TestCase):
    """The client against a real `node bin/broker serve`."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = broker_daemon.Daemon()
        cls.admin = BrokerClient(cls.daemon.url, cls.daemon.admin_token, cls.daemon.ca_pem)
        cls.owner = cls.admin.owner()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def assertCode(self, code, fn, *args, status=None, **kw):
        with self.assertRaises(BrokerError) as cm:
            fn(*args, **kw)
        err = cm.exception
        self.assertEqual(err.code, code, f"expected {code}, got {err!s}")
        if status is not None:
            self.assertEqual(err.status, status)
        return err

    def listen(self, service):
        """A TCP listener on the service's host:port (what `ready` probes)."""
        sock = socket.create_server((service["host"], service["port"]))
        self.addCleanup(sock.close)
        return sock

    def register_ready(self, name):
        reg = self.admin.register(name, tunnel="none")
        self.listen(reg["service"])
        server = self.admin.with_token(reg["serviceToken"])
        self.assertEqual(server.ready(name)["status"], "ready")
        return reg, server

    def test_health_and_whoami(self):
        self.assertEqual(self.admin.health()["status"], "ok")
        me = self.admin.whoami()
        self.assertEqual(me["kind"], "principal")
        self.assertEqual(me["principal"]["role"], "admin")
        self.assertEqual(self.owner, me["principal"]["name"])

    def test_discovery_from_daemon_state_dir(self):
        env = {"HOME": os.path.join(self.daemon.tmp, "nohome"), "PATH": os.environ.get("PATH", ""),
               "BROKER_DATA": os.path.join(self.daemon.tmp, "state")}
        with mock.patch.dict(os.environ, env, clear=True):
            c = BrokerClient()
        self.assertEqual(c.whoami()["principal"]["name"], self.owner)

    def test_service_lifecycle(self):
        name = "py-life"
        reg = self.admin.register(name, tunnel="none", labels={"lang": "python"})
        svc = reg["service"]
        self.assertTrue(reg["serviceToken"].startswith("bks_"))
        self.assertEqual((svc["owner"], svc["name"], svc["status"]), (self.owner, name, "pending"))
        self.assertEqual(svc["labels"], {"lang": "python"})
        server = self.admin.with_token(reg["serviceToken"])
        self.assertEqual(server.whoami()["kind"], "service")
        self.assertEqual(server.owner(), self.owner)

        self.assertCode("service_not_ready", self.admin.load, name, status=409)
        self.listen(svc)
        self.assertEqual(server.ready(name)["status"], "ready")

        loaded = self.admin.load(name)
        key = loaded["key"]
        self.assertTrue(key.startswith("bkk_"))
        self.assertEqual(loaded["connect"]["port"], svc["port"])
        v = server.verify(key)
        self.assertEqual((v["valid"], v["principal"], v["keyId"]), (True, self.owner, loaded["keyId"]))
        self.assertTrue(server.is_valid(key))
        self.assertEqual(server.verify(fake_secret("bkk_")), {"valid": False})
        self.assertFalse(server.is_valid("not a key"))
        self.assertFalse(server.is_valid(""))

        self.assertEqual(server.heartbeat(name)["name"], name)
        self.assertEqual(server.get(name)["id"], svc["id"])
        self.assertEqual(self.admin.get(f"{self.owner}/{name}")["id"], svc["id"])
        self.assertIn(name, [s["name"] for s in self.admin.query(match=name)])

        time.sleep(0.5)  # the daemon logs asynchronously
        log = self.daemon.log_text()
        self.assertIn(name, log, "expected request logs from the daemon")
        for secret in (key, reg["serviceToken"], self.daemon.admin_token):
            self.assertNotIn(secret, log, "a secret reached the daemon's log")

        self.assertIsNone(self.admin.unregister(name))
        self.assertCode("service_not_found", self.admin.load, name, status=404)
        self.assertCode("service_not_found", self.admin.get, name, status=404)
        self.assertNotIn(name, [s["name"] for s in self.admin.query(match=name)])

    def test_ready_with_nothing_listening(self):
        reg = self.admin.register("py-notready", tunnel="none")
        server = self.admin.with_token(reg["serviceToken"])
        self.assertCode("service_not_ready", server.ready, "py-notready", status=409)

    def test_revoke_and_once_keys(self):
        _, server = self.register_ready("py-keys")
        loaded = self.admin.load("py-keys")
        self.assertTrue(server.is_valid(loaded["key"]))
        self.assertIsNone(self.admin.revoke_key(loaded["keyId"]))
        self.assertFalse(server.is_valid(loaded["key"]))
        self.assertCode("key_not_found", self.admin.revoke_key, "key_doesnotexist", status=404)
        once = self.admin.load("py-keys", ttl_seconds=60, once=True)
        self.assertTrue(once["once"])
        self.assertTrue(server.is_valid(once["key"]))
        self.assertFalse(server.is_valid(once["key"]), "a --once key must verify only once")

    def test_key_of_another_service_is_invalid(self):
        _, server_a = self.register_ready("py-keya")
        self.register_ready("py-keyb")
        key_b = self.admin.load("py-keyb")["key"]
        self.assertEqual(server_a.verify(key_b), {"valid": False})

    def test_query_follows_cursor(self):
        names = [f"pq-{i}" for i in range(5)]
        for n in names:
            self.admin.register(n)
        got = sorted(s["name"] for s in self.admin.query(match="pq-*", page_size=2))
        self.assertEqual(got, names)
        self.assertEqual(len(self.admin.query(match="pq-*", limit=3)), 3)
        got = sorted(s["name"] for s in self.admin.query(match=f"{self.owner}/pq-?", page_size=1))
        self.assertEqual(got, names)

    def test_error_codes(self):
        err = self.assertCode("service_not_found", self.admin.get, "py-missing", status=404)
        self.assertTrue(err.request_id)
        self.assertTrue(err.message)
        self.assertCode("service_not_found", self.admin.load, "nobody/py-missing", status=404)
        self.admin.register("py-dup")
        self.assertCode("name_taken", self.admin.register, "py-dup", status=409)
        err = self.assertCode("validation_failed", self.admin.register, "Bad Name!", status=400)
        self.assertCode("forbidden", self.admin.verify, fake_secret("bkk_"), status=403)

        bad = fake_secret("bku_")
        err = self.assertCode("unauthenticated", self.admin.with_token(bad).whoami, status=401)
        self.assertNotIn(bad, str(err))

    def test_unreachable_closed_port(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        c = BrokerClient(f"https://127.0.0.1:{port}", self.daemon.admin_token, self.daemon.ca_pem, timeout=5)
        err = self.assertCode("unreachable", c.health, status=0)
        self.assertNotIn(self.daemon.admin_token, str(err))

    def test_tls_pinning_other_ca(self):
        tmp = tempfile.mkdtemp(prefix="broker-pytest-ca-")
        self.addCleanup(shutil.rmtree, tmp, True)
        other = broker_daemon.make_other_ca(tmp)
        c = BrokerClient(self.daemon.url, self.daemon.admin_token, other)
        err = self.assertCode("unreachable", c.whoami, status=0)
        self.assertIn("certificate", str(err).lower())
        # ssl_context() pins the same way, for direct TLS connections.
        host, port = self.admin._host, self.admin._port
        with socket.create_connection((host, port), timeout=5) as raw:
            with self.admin.ssl_context().wrap_socket(raw, server_hostname=host) as tls:
                self.assertTrue(tls.version() in ("TLSv1.2", "TLSv1.3"))
        with socket.create_connection((host, port), timeout=5) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                c.ssl_context().wrap_socket(raw, server_hostname=host)

    def test_second_principal_cannot_see_others_services(self):
        created = self.admin.request("POST", "/v1/principals", {"name": "pybob"})
        self.assertTrue(created["token"].startswith("bku_"))
        bob = self.admin.with_token(created["token"])
        self.assertEqual(bob.owner(), "pybob")
        self.register_ready("py-private")
        full = f"{self.owner}/py-private"
        self.assertCode("service_not_found", bob.get, full, status=404)
        self.assertCode("service_not_found", bob.load, full, status=404)
        self.assertCode("service_not_found", bob.unregister, full, status=404)
        self.assertCode("service_not_found", bob.get, "py-private", status=404)  # = pybob/py-private
        self.assertEqual(bob.query(match="py-private"), [])
        key_id = self.admin.load("py-private")["keyId"]
        self.assertCode("key_not_found", bob.revoke_key, key_id, status=404)
        self.assertEqual(self.admin.get(full)["status"], "ready")


if __name__ == "__main__":
    unittest.main()
