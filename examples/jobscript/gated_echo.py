#!/usr/bin/env python3
"""An echo server gated by the broker's Python helper (key line → OK/DENIED → echo).

Reads its port from BROKER_PORT and the service token from BROKER_TOKEN, as left by
`eval "$(broker register NAME --tunnel none --format env)"` in a job script, and confirms it is
ready (BROKER_SERVICE) once it listens.
"""
import os
import socketserver
import sys

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


if __name__ == "__main__":
    with Server((os.environ.get("BROKER_HOST", "127.0.0.1"), int(os.environ["BROKER_PORT"])), Echo) as srv:
        srv.broker_client = BrokerClient()  # BROKER_TOKEN is the service token here
        # Listening now: confirm it, so clients waiting with `broker load --wait` get their key.
        if os.environ.get("BROKER_SERVICE"):
            srv.broker_client.ready(os.environ["BROKER_SERVICE"])
        srv.serve_forever()
