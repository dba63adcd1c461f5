"""The package installs with pip and no package index (issue 2: no network access)."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class InstallTest(unittest.TestCase):
    def test_pip_install_without_an_index(self):
        with tempfile.TemporaryDirectory() as venv:
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            py = os.path.join(venv, "bin", "python")
            r = subprocess.run(
                [py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q", HERE],
                capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"},
            )
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            out = subprocess.run(
                [py, "-c", "import broker_client, os; print(os.path.dirname(broker_client.__file__))"],
                capture_output=True, text=True, cwd=venv, check=True,
            ).stdout.strip()
            self.assertTrue(out.startswith(venv), out)


if __name__ == "__main__":
    unittest.main()
