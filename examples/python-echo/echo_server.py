#!/usr/bin/env python3
"""A plain TCP echo server that knows nothing of the broker.

    broker run echo -- python3 examples/python-echo/echo_server.py --port {app_port}

It listens on 127.0.0.1 only; `broker run` puts the key gate in front of it. With --count-file
it records how many connections reached it (the tests use that to prove that nothing without a
key ever does).
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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count-file")
    a = p.parse_args()
    with Server(("127.0.0.1", a.port), Echo) as srv:
        srv.count_file, srv.count, srv.lock = a.count_file, 0, threading.Lock()
        srv.serve_forever()


if __name__ == "__main__":
    main()
