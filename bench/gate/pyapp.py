"""A Python app for the HTTPS gate benchmark, the kind of server HPC users run behind the broker
(Jupyter and TensorBoard are Python): stdlib http.server, HTTP/1.1 keep-alive, a thread per
connection, answering 'ok'. `pyapp.py PORT` serves plain HTTP (behind `broker run --mode https`);
`pyapp.py PORT CERT KEY` serves the same over TLS itself (the direct baseline)."""
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the second waits for a delayed ACK
    # (40 ms). Real servers (tornado, under Jupyter) set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
if len(sys.argv) == 4:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
