"""Python client for the session broker (stdlib only, Python >= 3.9).

Talks to the broker's HTTPS JSON API (``/v1``) with bearer-token auth, pinning the broker's own CA:
the TLS context trusts that CA and nothing else, checks the host name and never disables
verification. Secrets (user/service tokens, client keys) only ever travel in a header or a JSON
body -- never in a URL -- and this module never logs anything.

Typical use::

    import socket
    from broker_client import BrokerClient, BrokerError

    client = BrokerClient()                    # credentials discovered as the CLI does
    reg = client.register("viz", tunnel="none")
    listener = socket.create_server((reg["service"]["host"], reg["service"]["port"]))
    svc = client.with_token(reg["serviceToken"])   # what the server process uses
    svc.ready("viz")                           # the broker checks that something listens
    key = client.load("viz")["key"]
    assert svc.is_valid(key)
"""

import http.client
import json
import os
import re
import socket
import ssl
import stat
import time
import urllib.parse

__all__ = ["BrokerClient", "BrokerError", "GatedRequestHandler", "ServiceConnection",
           "discover_credentials", "gate_socket", "munge_credential", "service_hostname"]
__version__ = "0.1.0"

# Fallback codes when an error response has no parsable body (e.g. a proxy in between).
_STATUS_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 429: "rate_limited"}


class BrokerError(Exception):
    """An API error (``code`` from the broker's catalogue) or ``code == "unreachable"``.

    Attributes: ``code`` (stable string to branch on), ``status`` (HTTP status, 0 when
    unreachable), ``message``, ``request_id`` (or None), ``retry_after`` (seconds, rate_limited
    only, else None) and ``details`` (validation details or None).
    """

    def __init__(self, code, message, status=0, request_id=None, retry_after=None, details=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.details = details

    def __str__(self):
        extra = f" (HTTP {self.status}" + (f", request {self.request_id})" if self.request_id else ")")
        return f"{self.code}: {self.message}" + (extra if self.status else "")


def _nonempty(value):
    return value if value else None


def _who(mode, bits):
    group, other = mode & bits & 0o070, mode & bits & 0o007
    return "group and other" if group and other else "group" if group else "other"


def _check_private_file(path, st):
    """FS-5, as ssh's ``sshkey_perm_ok``: a file holding a token must be a regular file owned by
    the caller (or root) that group and other cannot access at all. Raises BrokerError
    ``insecure_path`` naming ``path`` and the fix."""
    if not stat.S_ISREG(st.st_mode):
        raise BrokerError("insecure_path", f"{path} is not a regular file")
    if not hasattr(os, "getuid"):  # no Unix users here
        return
    uid = os.getuid()
    if st.st_uid not in (uid, 0):
        raise BrokerError(
            "insecure_path",
            f"{path} holds a token and is owned by uid {st.st_uid}, not by you (uid {uid}): "
            "another user's file could point you at their broker; run the command as its owner, "
            "or replace it with a copy of your own (mode 0600)")
    if st.st_mode & 0o077:
        raise BrokerError(
            "insecure_path",
            f"{path} holds a token and is accessible by {_who(st.st_mode, 0o077)} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")


def _read_json_file(path):
    """The JSON object in the credentials file ``path``, or None when it does not exist. The
    opened file itself is checked (fstat), so a link is judged by its target and cannot be
    swapped between the check and the read. Raises BrokerError ``insecure_path`` for a file
    others can read or write or another user owns, ValueError when it cannot be read or parsed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read broker credentials {path}: {e}") from None
    try:
        with open(fd, encoding="utf-8") as f:
            _check_private_file(path, os.fstat(f.fileno()))
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read broker credentials {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"broker credentials {path}: not a JSON object")
    return data


def _credential_files():
    """The two credentials.json paths of the discovery order: user config, then daemon state."""
    home = os.path.expanduser("~")
    config = _nonempty(os.environ.get("XDG_CONFIG_HOME")) or os.path.join(home, ".config")
    state = _nonempty(os.environ.get("BROKER_DATA")) or os.path.join(
        _nonempty(os.environ.get("XDG_STATE_HOME")) or os.path.join(home, ".local", "state"), "broker")
    return [os.path.join(config, "broker", "credentials.json"), os.path.join(state, "credentials.json")]


SITE_CONFIG_PATH = "/etc/broker/client.json"


def _site_config_path():
    """The site client config: ``$BROKER_CLIENT_CONFIG`` or ``/etc/broker/client.json``."""
    return _nonempty(os.environ.get("BROKER_CLIENT_CONFIG")) or SITE_CONFIG_PATH


def _check_safe_directory(directory):
    """OpenSSH's ``safe_path()`` walk: ``directory`` and every ancestor owned by the caller or
    root and writable by nobody else (a sticky directory such as /tmp is allowed). Raises
    BrokerError ``insecure_path``."""
    if not hasattr(os, "getuid"):
        return
    uid = os.getuid()
    path = os.path.realpath(directory)
    while True:
        st = os.stat(path)
        if st.st_uid not in (uid, 0):
            raise BrokerError("insecure_path", f"{path} is owned by uid {st.st_uid}, not by you "
                              f"(uid {uid}) or root: its owner can replace what is in it")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise BrokerError("insecure_path", f"{path} is writable by {_who(st.st_mode, 0o022)} "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}): anyone who can write it "
                              "can replace what is in it")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _read_trusted_file(path):
    """A public file that decides which broker you trust (the site config, a CA file): read
    only when it is the caller's or root's, writable by nobody else, in a safe directory. None
    when it does not exist; BrokerError ``insecure_path`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with open(fd, encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BrokerError("insecure_path", f"{path} is not a regular file")
        if hasattr(os, "getuid"):
            uid = os.getuid()
            if st.st_uid not in (uid, 0):
                raise BrokerError("insecure_path", f"{path} is owned by uid {st.st_uid}, not by "
                                  f"you (uid {uid}) or root: its owner could point you at a "
                                  "broker of their choosing")
            if st.st_mode & 0o022:
                raise BrokerError("insecure_path", f"{path} is writable by "
                                  f"{_who(st.st_mode, 0o022)} (mode {stat.S_IMODE(st.st_mode):04o}): "
                                  "anyone who can write it chooses which broker you trust")
            _check_safe_directory(os.path.dirname(os.path.realpath(path)))
        return f.read()


def _ca_pem_file(path):
    with open(os.path.expanduser(path), encoding="ascii") as f:
        return f.read()


def _ca_pem(ca):
    """A CA given as PEM text/bytes or as a path to a PEM file -> PEM text."""
    if isinstance(ca, bytes):
        ca = ca.decode("ascii")
    return ca if "-----BEGIN" in ca else _ca_pem_file(ca)


def _ca_from_file_value(value, file):
    """A file's ``ca``: the PEM itself, or a path (relative to the file's directory)."""
    if "-----BEGIN CERTIFICATE-----" in value:
        return value
    path = os.path.join(os.path.dirname(os.path.abspath(file)), os.path.expanduser(value))
    pem = _read_trusted_file(path)
    if pem is None:
        raise ValueError(f"the CA file {path} named in {file} does not exist; "
                         'fix "ca" there (a path or the PEM)')
    return pem


def _origin(url):
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _urls_of(data):
    out = []
    for key in ("url", "urls"):
        v = data.get(key)
        for u in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
            if isinstance(u, str) and u:
                out.append(u)
    return out


def discover_credentials(url=None, token=None, ca=None):
    """Resolve ``url``, ``token`` and the CA PEM, each on its own; the first hit wins.

    Order: explicit argument -> env ``BROKER_URL`` / ``BROKER_TOKEN`` / ``BROKER_CA`` (a path to a
    PEM file) -> ``$XDG_CONFIG_HOME/broker/credentials.json`` (default ``~/.config/...``) ->
    ``<state dir>/credentials.json`` with state dir ``$BROKER_DATA`` or ``$XDG_STATE_HOME/broker``
    (default ``~/.local/state/broker``) -> the site client config ``$BROKER_CLIENT_CONFIG`` or
    ``/etc/broker/client.json`` (``{"urls": [...], "ca": PATH or PEM}``; never a token). In the
    files ``ca`` is a PEM string or a path (relative to the file). An explicit ``ca`` may be PEM
    text or a path. A token a login cached (it carries a ``login`` marker naming its broker) is
    used only for that broker and only until it expires. Returns ``{"url", "urls", "token",
    "ca_pem", "login"}``; unresolved fields are None.

    A credentials file is opened only while a field is still missing, and used only when it is
    the caller's (or root's) and group/other cannot access it: otherwise this raises
    :class:`BrokerError` with ``code == "insecure_path"`` and a message naming the file and the
    fix (``chmod 600 <path>``), as ssh refuses an unprotected private key. The site config and a
    CA file it names must be writable by nobody but their owner (the caller or root). A file
    that exists but cannot be read or parsed raises ValueError.
    """
    found = {"url": _nonempty(url), "token": _nonempty(token),
             "ca_pem": _ca_pem(ca) if ca else None}
    env = {"url": "BROKER_URL", "token": "BROKER_TOKEN", "ca_pem": "BROKER_CA"}
    for field, var in env.items():
        value = _nonempty(os.environ.get(var))
        if found[field] is None and value:
            found[field] = _ca_pem_file(value) if field == "ca_pem" else value
    urls = [found["url"]] if found["url"] else []
    cached = []
    site = _site_config_path()
    for path in _credential_files() + [site]:
        if all(v is not None for v in found.values()):
            break
        if path == site:
            text = _read_trusted_file(path)
            try:
                data = json.loads(text) if text is not None else {}
            except ValueError as e:
                raise ValueError(f"cannot read the site client config {path}: {e}") from None
            if not isinstance(data, dict):
                raise ValueError(f"the site client config {path} is not a JSON object")
        else:
            data = _read_json_file(path) or {}
        if found["url"] is None and _urls_of(data):
            urls = _urls_of(data)
            found["url"] = urls[0]
        if found["ca_pem"] is None and isinstance(data.get("ca"), str) and data["ca"]:
            found["ca_pem"] = _ca_from_file_value(data["ca"], path)
        # A site config is world-readable: a token in it would be everyone's, so it is not used.
        if found["token"] is None and path != site and isinstance(data.get("token"), str) and data["token"]:
            login = data.get("login")
            if isinstance(login, dict) and isinstance(login.get("url"), str):
                cached.append((data["token"], login))
            else:
                found["token"] = data["token"]
    found["login"] = None
    if found["token"] is None and found["url"]:
        origins = {_origin(u) for u in urls}
        for tok, login in cached:
            expires = login.get("expiresAt")
            if _origin(login["url"]) in origins and not (
                    isinstance(expires, str) and _iso_epoch(expires) <= time.time() + 30):
                found["token"], found["login"] = tok, login
                break
    found["urls"] = urls
    return found


def _iso_epoch(iso):
    """``2026-11-30T13:24:14.391Z`` -> epoch seconds (0 when unparsable)."""
    import datetime
    try:
        return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0


def munge_credential(uid=None):
    """A MUNGE credential from the local munged (``munge -n [-u UID]``, no shell), or None when
    ``munge`` is not installed. Raises BrokerError ``identity_unavailable`` when munged cannot
    make one."""
    import subprocess
    args = ["munge", "-n"] + (["-u", str(uid)] if uid is not None else [])
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=5,
                              check=False)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BrokerError("identity_unavailable", f"cannot run munge: {e}") from None
    cred = done.stdout.decode("latin-1").strip()
    if done.returncode == 0 and cred.startswith("MUNGE:"):
        return cred
    why = done.stderr.decode("latin-1").strip().splitlines()
    raise BrokerError("identity_unavailable", "munge could not make a credential ("
                      f"{why[0] if why else 'exit %d' % done.returncode}); is munged running on "
                      "this node? Meanwhile use a token (BROKER_TOKEN)")


def _write_private_json(path, data):
    """Write ``data`` to ``path`` 0600 in a 0700 directory of the caller's: a new file made with
    O_CREAT|O_EXCL|O_NOFOLLOW, then renamed over the target (a link there is replaced, never
    followed)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _check_safe_directory(directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _Refused(Exception):
    """A broker URL refused the connection: nothing was sent, the next one may answer."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class BrokerClient:
    """A client of one broker. Missing arguments are found by :func:`discover_credentials`.

    ``ca`` may be PEM text or a path. Raises ValueError when no URL or no CA can be found, or the
    URL is not ``https``; BrokerError ``insecure_path`` when a credentials file it must read is
    not private (see :func:`discover_credentials`). Each call opens its own connection, so one
    client may be shared by threads. HTTP proxies and redirects are never followed.
    """

    def __init__(self, url=None, token=None, ca=None, timeout=10.0, auto_login=None):
        creds = discover_credentials(url, token, ca)
        if not creds["url"]:
            raise ValueError("no broker URL: pass url=, set BROKER_URL, or ask your admin for the "
                             "site client config (/etc/broker/client.json)")
        if not creds["ca_pem"]:
            raise ValueError("no broker CA: pass ca= or set BROKER_CA to the CA PEM file")
        self._urls = []
        for u in creds["urls"] or [creds["url"]]:
            parts = urllib.parse.urlsplit(u)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError(f"broker URL must be https://HOST:PORT, got {u!r}")
            self._urls.append((f"https://{parts.netloc}", parts.hostname, parts.port or 443))
        self._use(0)
        self._token = creds["token"]
        self._login = creds["login"]
        self._ca_pem = creds["ca_pem"]
        self.timeout = timeout
        self._ctx = self.ssl_context()
        self._owner = None
        # Log in as the Unix user when there is no token (MUNGE, or on the broker host the
        # connection); again, once, when a cached login's token is refused. Not with token=.
        self.auto_login = token is None if auto_login is None else auto_login
        self._logged_in_here = False
        self._relogged = False

    def _use(self, i):
        self._url_index = i
        self.url, self._host, self._port = self._urls[i]

    def __repr__(self):
        return f"BrokerClient(url={self.url!r})"

    def with_token(self, token):
        """A client of the same broker (same URL, CA, timeout) authenticating with ``token`` --
        e.g. the ``serviceToken`` of a register response, for the server process."""
        return BrokerClient(self.url, token, self._ca_pem, self.timeout)

    def login(self, method=None, cache=True):
        """Log in as the Unix user this process runs as (issue 12) and use the token from now on:
        with MUNGE (``munge -n``, restricted to the broker's UID) when the broker accepts it and
        ``munge`` is installed here, else -- when the broker is on this host -- by the connection
        alone (``method`` forces ``"munge"`` or ``"peer"``). The token is cached in the user's
        ``~/.config/broker/credentials.json`` (0600) for this broker unless ``cache=False`` (a
        cache that cannot be written is skipped). Returns the login response without the token:
        ``{"tokenId", "expiresAt", "principal", "method", "cachedIn"}``. Raises BrokerError
        (``unauthenticated`` with ``details["reason"]``, ``forbidden``, ``identity_unavailable``).
        """
        ident = (self.health() or {}).get("identity") or {}
        res = None
        if method == "munge" or (method is None and ident.get("munge")):
            if not ident.get("munge"):
                raise BrokerError("identity_unavailable",
                                  f"the broker at {self.url} does not accept MUNGE logins")
            cred = munge_credential(ident.get("uid"))
            if cred is not None:
                res = self.request("POST", "/v1/login", auth=False,
                                   headers={"Authorization": f"MUNGE {cred}"})
            elif method == "munge":
                raise BrokerError("identity_unavailable", "munge is not installed on this node")
        if res is None:
            loopback = self._host in ("localhost", "::1") or self._host.startswith("127.")
            if not (ident.get("peer") and loopback):
                raise BrokerError("unauthenticated", "no token, and no way to log in from here "
                                  f"to {self.url}: install munge, or set BROKER_TOKEN to a token "
                                  "from your admin")
            res = self.request("POST", "/v1/login", auth=False)
        uid = res.get("principal", {}).get("uid")
        if hasattr(os, "getuid") and uid is not None and uid != os.getuid():
            raise BrokerError("unauthenticated", "the broker logged this connection in as "
                              f"{res['principal'].get('name')} (uid {uid}), not as you (uid "
                              f"{os.getuid()}): is something relaying your connection?")
        cached_in = None
        if cache:
            path = _credential_files()[0]
            try:
                data = _read_json_file(path) or {}
                data["token"] = res["token"]
                data["login"] = {"url": self.url, "expiresAt": res["expiresAt"],
                                 "tokenId": res["tokenId"], "method": res["method"]}
                _write_private_json(path, data)
                cached_in = path
            except (OSError, ValueError, BrokerError):
                cached_in = None
        self._token = res["token"]
        self._login = {"url": self.url, "expiresAt": res["expiresAt"], "tokenId": res["tokenId"]}
        self._logged_in_here = True
        self._owner = None
        out = {k: v for k, v in res.items() if k != "token"}
        out["cachedIn"] = cached_in
        return out

    def ssl_context(self):
        """A new client SSLContext trusting only the broker CA (TLS >= 1.2, host names checked).
        For an ``https`` service prefer :meth:`service_ssl_context` or
        :meth:`service_connection`: they also make sure the certificate is *that* service's."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self._ca_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def service_ssl_context(self, service):
        """A client SSLContext for one ``https`` service (SECURITY.md NET-2, SES-3): it trusts
        only the broker CA, checks the host name, and after each handshake checks that the
        certificate's common name is the service's ``owner/name`` (the broker puts it in every
        service certificate), so service A's certificate presented on service B's port is
        refused even where both carry the same host name. Works for blocking sockets and for
        asyncio (``ssl=ctx``); pass ``server_hostname=`` :func:`service_hostname` (the
        service's ``hostname``) when wrapping yourself.

        ``service`` is a service object (``reg["service"]``, ``client.get(name)``,
        ``loaded["service"]``). Raises ValueError for a ``tcp`` service; a handshake with the
        wrong certificate raises ``ssl.SSLCertVerificationError``."""
        expected = _service_identity(service)
        ctx = self.ssl_context()
        ctx.sslsocket_class = _ServiceSSLSocket
        ctx.sslobject_class = _ServiceSSLObject
        ctx.broker_service = expected
        return ctx

    def service_connection(self, service, address="127.0.0.1", timeout=None):
        """An ``http.client.HTTPSConnection`` to one ``https`` service: TCP to
        ``address:service["port"]`` (loopback by default: the broker publishes services there,
        and glibc does not resolve ``*.localhost``), TLS checked by :meth:`service_ssl_context`
        against the service's own name (its ``hostname`` field, ``NAME.OWNER.localhost``),
        which is also the ``Host`` header. Nothing is sent until you make a request; a wrong
        certificate then raises ``ssl.SSLCertVerificationError``. Never uses a proxy.

        Example::

            conn = client.service_connection(client.get("alice/nb"))
            conn.request("GET", "/", headers={"Authorization": f"Bearer {key}"})
            body = conn.getresponse().read()
        """
        ctx = self.service_ssl_context(service)  # checks that it is an https service object
        return ServiceConnection(service_hostname(service), service["port"], address, ctx,
                                 self.timeout if timeout is None else timeout)

    # -- transport -----------------------------------------------------------------------------

    def request(self, method, path, body=None, auth=True, headers=None):
        """Send one API request; ``path`` starts with ``/v1/``. Returns the decoded JSON body (None
        for 204). Raises :class:`BrokerError`. Public as an escape hatch for routes without a
        method here (e.g. ``/v1/principals``). With no token it logs in first, and when a cached
        login's token is refused it logs in again and retries -- once (see :meth:`login`)."""
        if not auth:
            return self._send(method, path, body, False, headers)
        if not self._token and self.auto_login:
            self.login()
        try:
            return self._send(method, path, body, True, headers)
        except BrokerError as e:
            if (e.code != "unauthenticated" or not self.auto_login or self._relogged
                    or not (self._login or self._logged_in_here)):
                raise
            self._relogged = True
            self.login()
            return self._send(method, path, body, True, headers)

    def _send(self, method, path, body, auth, extra_headers):
        """One request; on a refused connection the next of the site's broker URLs is tried
        (nothing was sent)."""
        try:
            return self._send_once(method, path, body, auth, extra_headers)
        except _Refused as e:
            if self._url_index + 1 >= len(self._urls):
                raise e.error from None
            self._use(self._url_index + 1)
            return self._send(method, path, body, auth, extra_headers)

    def _send_once(self, method, path, body, auth, extra_headers):
        headers = {"Accept": "application/json", "User-Agent": f"broker-client-python/{__version__}"}
        headers.update(extra_headers or {})
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                           context=self._ctx)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except ssl.SSLCertVerificationError as e:
            raise BrokerError("unreachable", f"TLS verification of {self.url} failed: "
                              f"{e.verify_message or e.reason}") from None
        except ConnectionRefusedError as e:
            raise _Refused(BrokerError("unreachable", f"cannot reach broker at {self.url}: "
                                       f"{str(e) or type(e).__name__}")) from None
        except (OSError, http.client.HTTPException) as e:  # refused, timeout, TLS, reset, ...
            raise BrokerError("unreachable", f"cannot reach broker at {self.url}: "
                              f"{str(e) or type(e).__name__}") from None
        finally:
            conn.close()
        request_id = resp.getheader("X-Request-Id")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if 200 <= resp.status < 300:
            if resp.status != 204 and raw and payload is None:
                raise BrokerError("internal", "broker sent a non-JSON response", resp.status, request_id)
            return payload
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            err = {"code": _STATUS_CODES.get(resp.status, "internal"),
                   "message": f"HTTP {resp.status} {resp.reason}"}
        retry_after = None
        if resp.getheader("Retry-After", "").strip().isdigit():
            retry_after = int(resp.getheader("Retry-After").strip())
        if isinstance(payload, dict) and isinstance(payload.get("requestId"), str):
            request_id = payload["requestId"]
        raise BrokerError(err["code"], str(err.get("message", "")), resp.status, request_id,
                          retry_after, err.get("details"))

    def _service_path(self, name, suffix=""):
        """``/v1/services/{owner}/{name}{suffix}``; a bare name means the caller's own."""
        owner, sep, svc = name.partition("/")
        if not sep:
            owner, svc = self.owner(), name
        q = urllib.parse.quote
        return f"/v1/services/{q(owner, safe='')}/{q(svc, safe='')}{suffix}"

    # -- API -----------------------------------------------------------------------------------

    def health(self):
        """``GET /v1/health`` (no auth) -> ``{"status": "ok", "version": ...}``."""
        return self.request("GET", "/v1/health", auth=False)

    def whoami(self):
        """``GET /v1/whoami`` -> ``{"kind": "principal", "principal": {...}}`` or
        ``{"kind": "service", "service": {...}}``."""
        return self.request("GET", "/v1/whoami")

    def owner(self):
        """The owner bare service names resolve to: the principal's name, or the service's
        owner for a service token. Looked up once per client."""
        if self._owner is None:
            me = self.whoami()
            self._owner = me["principal"]["name"] if me.get("kind") == "principal" else me["service"]["owner"]
        return self._owner

    def register(self, name, mode="tcp", tunnel=None, host=None, port=None, ttl_seconds=None,
                 labels=None, csr=None):
        """Register service ``name`` (user token) -> the full response: ``{"service",
        "serviceToken", "tls"?}``. ``tunnel`` defaults to ``"ssh"`` on the broker; ``port`` only
        with ``tunnel="none"``. The service token is shown only here: keep it secret."""
        body = {"name": name, "mode": mode}
        for key, value in (("tunnel", tunnel), ("host", host), ("port", port),
                           ("ttlSeconds", ttl_seconds), ("labels", labels), ("csr", csr)):
            if value is not None:
                body[key] = value
        return self.request("POST", "/v1/services", body)

    def load(self, name, ttl_seconds=None, once=False):
        """Mint a client key for service ``name`` -> ``{"service", "key", "keyId", "expiresAt",
        "once", "connect", ...}``. Raises ``service_not_ready`` until the service is ready."""
        body = {}
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        if once:
            body["once"] = True
        return self.request("POST", self._service_path(name, "/keys"), body)

    def verify(self, key):
        """Check a client key (service token only) -> ``{"valid": True, "principal", "keyId",
        "expiresAt"}`` or ``{"valid": False}``. Any string up to 512 bytes (the longest key line
        a gate accepts) gets an answer; transport, auth and rate-limit errors raise."""
        if not isinstance(key, str) or not key:
            return {"valid": False}
        return self.request("POST", "/v1/verify", {"key": key})

    def is_valid(self, key):
        """True when :meth:`verify` says the key is valid for this service."""
        return self.verify(key).get("valid") is True

    def query(self, match=None, limit=None, page_size=100):
        """Services visible to the caller, as a list, following ``nextCursor``. ``match`` is a
        glob (``*``, ``?``) on the name, or on ``owner/name`` if it contains ``/``; ``limit`` caps
        the total returned."""
        services, cursor = [], None
        while limit is None or len(services) < limit:
            size = page_size if limit is None else min(page_size, limit - len(services))
            params = {"limit": str(max(1, min(size, 1000)))}
            if match is not None:
                params["match"] = match
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", "/v1/services?" + urllib.parse.urlencode(params))
            services.extend(page.get("services", []))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return services if limit is None else services[:limit]

    def get(self, name):
        """The service object of ``name`` (``service_not_found`` if missing or not visible)."""
        return self.request("GET", self._service_path(name))["service"]

    def unregister(self, name):
        """Remove service ``name`` and revoke all its keys (owner, admin or its service token)."""
        self.request("DELETE", self._service_path(name))

    def heartbeat(self, name):
        """Extend the lease of ``name`` (service token) -> the service object."""
        return self.request("POST", self._service_path(name, "/heartbeat"), {})["service"]

    def ready(self, name):
        """Confirm the server of ``name`` listens (service token) -> the service object. With
        ``tunnel="none"`` the broker probes host:port: ``service_not_ready`` if nothing listens."""
        return self.request("POST", self._service_path(name, "/ready"), {})["service"]

    def revoke_key(self, key_id):
        """Revoke a client key by its ``keyId`` (never by the key itself)."""
        self.request("DELETE", "/v1/keys/" + urllib.parse.quote(key_id, safe=""))


# --- Reaching https services (SECURITY.md NET-2, SES-3) ---------------------------------------

# One DNS label in the readable form; the rule of serviceHostname() in src/protocol/names.ts.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _readable_label(s):
    return isinstance(s, str) and _DNS_LABEL.fullmatch(s) is not None and s[2:4] != "--"


def service_hostname(service, domain="localhost"):
    """The DNS name a service's certificate carries: its ``hostname`` field when the broker sent
    one; otherwise computed exactly as the broker does (``serviceHostname`` in
    src/protocol/names.ts) from ``owner``, ``name`` and ``id``: ``NAME.OWNER.<domain>`` when both
    are plain DNS labels, else ``svc-<id without "svc_">.<domain>``.

    >>> service_hostname({"owner": "alice", "name": "viz", "id": "svc_0123456789abcdef"})
    'viz.alice.localhost'
    """
    if isinstance(service.get("hostname"), str) and service["hostname"]:
        return service["hostname"]
    owner, name, sid = service["owner"], service["name"], service["id"]
    if _readable_label(name) and _readable_label(owner):
        label = f"{name}.{owner}"
    else:
        label = "svc-" + (sid[4:] if sid.startswith("svc_") else sid)
    return f"{label}.{domain}"


def _service_identity(service):
    """``owner/name`` of an https service object (what its certificate's CN must be)."""
    if not isinstance(service, dict) or not {"owner", "name", "port"} <= service.keys():
        raise ValueError("expected a service object with owner, name and port "
                         "(reg['service'], client.get(name) or loaded['service'])")
    if service.get("mode", "https") != "https":
        raise ValueError(f"{service['owner']}/{service['name']} is a {service['mode']} service: "
                         "it has no certificate (use the key line handshake)")
    return f"{service['owner']}/{service['name']}"


def _check_service_certificate(tls):
    """After a handshake on a :meth:`BrokerClient.service_ssl_context` context: the peer's
    certificate must name exactly the expected service as its CN."""
    expected = getattr(tls.context, "broker_service", None)
    if expected is None:
        return
    cert = tls.getpeercert() or {}
    names = [v for rdn in cert.get("subject", ()) for (k, v) in rdn if k == "commonName"]
    if names != [expected]:
        got = ascii(", ".join(names))[1:-1][:80] or "no common name"
        message = f"the certificate is for {got}, not for the service {expected}"
        err = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
        err.verify_code, err.verify_message = 62, message  # X509_V_ERR_HOSTNAME_MISMATCH
        err.library, err.reason = "SSL", "CERTIFICATE_VERIFY_FAILED"
        raise err


class _ServiceSSLSocket(ssl.SSLSocket):
    """SSLSocket that checks the service identity once the handshake is done."""

    def do_handshake(self, block=False):
        super().do_handshake(block)
        _check_service_certificate(self)


class _ServiceSSLObject(ssl.SSLObject):
    """The same for memory-BIO TLS (asyncio)."""

    def do_handshake(self):
        super().do_handshake()
        _check_service_certificate(self)


class ServiceConnection(http.client.HTTPSConnection):
    """An HTTPSConnection that connects to ``address`` but verifies, and sends as ``Host``, the
    service's own name. Made by :meth:`BrokerClient.service_connection`."""

    def __init__(self, hostname, port, address, context, timeout):
        super().__init__(hostname, port, timeout=timeout, context=context)
        self.address = address
        self._service_context = context

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout,
                                        self.source_address)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._service_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


# --- Gating a Python server (DESIGN §7) -------------------------------------------------------

MAX_KEY_LINE_BYTES = 512
KEY_LINE_TIMEOUT_SECONDS = 10.0
DRAIN_SECONDS = 0.5  # after DENIED: how long unread input is drained before the close


def gate_socket(sock, client, timeout=KEY_LINE_TIMEOUT_SECONDS):
    """Run the key handshake on an accepted socket: read the client's key line (at most 512
    bytes, all of it within ``timeout`` seconds of the call -- one deadline, so a client that
    dribbles a byte at a time cannot hold the connection), verify it with ``client`` (a
    BrokerClient holding the service token), answer ``OK\\n`` and return
    ``(principal, leftover_bytes)``; or answer ``DENIED\\n``, close the socket and return
    ``None``. Bytes the client sent after the key line are returned, not lost. Never raises for
    a bad client; the key is never logged."""
    buf = b""
    old_timeout = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            if len(buf) > MAX_KEY_LINE_BYTES:
                raise ValueError("key line too long")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ValueError("no key line in time")
            sock.settimeout(remaining)
            chunk = sock.recv(MAX_KEY_LINE_BYTES + 1 - len(buf))
            if not chunk:
                raise ValueError("closed before the key line")
            buf += chunk
        line, rest = buf.split(b"\n", 1)
        if len(line) > MAX_KEY_LINE_BYTES:
            raise ValueError("key line too long")
        answer = client.verify(line.decode("utf-8", "replace").strip())
        if answer.get("valid") is not True:
            raise ValueError("invalid key")
        sock.settimeout(timeout)
        sock.sendall(b"OK\n")
        sock.settimeout(old_timeout)
        return answer["principal"], rest
    except (OSError, ValueError, BrokerError):
        try:
            sock.sendall(b"DENIED\n")
            # Half-close, then drain briefly: closing with unread input makes the kernel send a
            # reset, and the client would never read DENIED. "Briefly" is one deadline too, or a
            # client still dribbling would hold the drain as it held the key line.
            sock.shutdown(socket.SHUT_WR)
            drain_until = time.monotonic() + DRAIN_SECONDS
            drained = 0
            while drained < 65536:
                remaining = drain_until - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
        return None


class GatedRequestHandler:
    """Mixin for ``socketserver`` handlers: put it first in the bases and set ``broker_client``
    on the server. ``self.principal`` and ``self.leftover`` (bytes sent after the key line) are
    set before ``handle()`` runs; connections without a valid key never reach ``handle()``.

    Example::

        class Echo(GatedRequestHandler, socketserver.BaseRequestHandler):
            def handle(self):
                self.request.sendall(self.leftover + self.request.recv(4096))

        srv = socketserver.ThreadingTCPServer(("127.0.0.1", port), Echo)
        srv.broker_client = BrokerClient(token=service_token)
    """

    def __init__(self, request, client_address, server):
        gated = gate_socket(request, server.broker_client)
        if gated is None:
            return  # refused: DENIED was sent, handle() never runs
        self.principal, self.leftover = gated
        super().__init__(request, client_address, server)
