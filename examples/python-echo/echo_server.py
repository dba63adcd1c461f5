#!/usr/bin/env python3
"""A plain echo server that knows nothing of the broker.

    broker run echo -- python3 examples/python-echo/echo_server.py --unix-socket {app_socket}

With --unix-socket it listens on a Unix socket: `broker run` gives it one in a private (0700)
directory, so no other user on the node can connect to it, and puts the key gate in front of it.
With --port it listens on 127.0.0.1:PORT instead, where every local user can connect: `broker
run` then warns and registers the service as exposed (use --isolate for such servers). With
--count-file it records how many connections reached it (the tests use that to prove that
nothing without a key ever does).
"""
import argparse
import socketserver
import threading


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        if self.server.count_file:
            with self.server.lock:
                self.server.count += 1
                with open(self.server.count_file, "w") as f:
                    f.write(str(self.server.count))
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(b"echo:" + data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def main():
    p = argparse.ArgumentParser(description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix-socket", metavar="PATH")
    where.add_argument("--port", type=int)
    p.add_argument("--count-file")
    a = p.parse_args()
    server = UnixServer(a.unix_socket, Echo) if a.unix_socket else Server(("127.0.0.1", a.port), Echo)
    with server as srv:
        srv.count_file, srv.count, srv.lock = a.count_file, 0, threading.Lock()
        srv.serve_forever()


if __name__ == "__main__":
    main()
