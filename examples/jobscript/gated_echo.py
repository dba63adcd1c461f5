#!/usr/bin/env python3
"""An echo server gated by the broker's Python helper (key line → OK/DENIED → echo).

Reads its port from BROKER_PORT and the service token from BROKER_TOKEN, as left by
`eval "$(broker register NAME --tunnel none --format env)"` in a job script, and confirms it is
ready (BROKER_SERVICE) once it listens.
"""
import errno
import os
import socket
import socketserver
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from broker_client import BrokerClient, GatedRequestHandler  # noqa: E402


class Echo(GatedRequestHandler, socketserver.BaseRequestHandler):
    def handle(self):
        data = self.leftover
        while True:
            if data:
                self.request.sendall(b"echo:" + data)
            data = self.request.recv(65536)
            if not data:
                return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def hold_loopback_twin(srv):
    """Accept the service's connections on the other loopback address too (127.0.0.1 <-> ::1):
    its name resolves to both, browsers try ::1 first, and a twin left free would be another
    user's to take (the broker then takes the service offline)."""
    host, port = srv.server_address[:2]
    twin = "::1" if host.startswith("127.") else "127.0.0.1" if host == "::1" else None
    if twin is None:
        return
    family = socket.AF_INET6 if twin == "::1" else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((twin, port))
        s.listen(64)
    except OSError as e:
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return  # no such address here: nobody can bind it either
        raise

    def accept():
        while True:
            conn, addr = s.accept()
            srv.process_request(conn, addr)  # a thread per client, as for the main listener

    threading.Thread(target=accept, daemon=True).start()


if __name__ == "__main__":
    with Server((os.environ.get("BROKER_HOST", "127.0.0.1"), int(os.environ["BROKER_PORT"])), Echo) as srv:
        hold_loopback_twin(srv)
        srv.broker_client = BrokerClient()  # BROKER_TOKEN is the service token here
        # Listening now: confirm it, so clients waiting with `broker load --wait` get their key.
        if os.environ.get("BROKER_SERVICE"):
            srv.broker_client.ready(os.environ["BROKER_SERVICE"])
        srv.serve_forever()
