"""Runs one test of the Eclipse Paho interoperability suite against a broker
of our choosing, over TLS with a client certificate when one is given.

The suite's clients open plain TCP sockets to localhost:1883. This shim
replaces the `socket` module seen by the suite's two client libraries with one
whose sockets connect to PAHO_TARGET_HOST:PAHO_TARGET_PORT instead and, when
PAHO_TLS_CERT is set, wrap the connection in TLS (client certificate
PAHO_TLS_CERT / PAHO_TLS_KEY, trust anchor PAHO_TLS_CA). Nothing of the suite is
changed on disk.

usage: paho_tls_shim.py SUITE_DIR SUITE_FILE TEST_ID
  e.g. paho_tls_shim.py .../interoperability client_test5.py Test.test_retained_message
"""

import os
import runpy
import socket as real_socket
import ssl
import sys
import threading
import types


def tls_context():
    cert = os.environ.get("PAHO_TLS_CERT")
    if not cert:
        return None
    ctx = ssl.create_default_context(cafile=os.environ["PAHO_TLS_CA"])
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, os.environ["PAHO_TLS_KEY"])
    return ctx


class RedirectedSocket:
    """A socket that connects to the target broker, over TLS if configured."""

    def __init__(self, target, ctx, *args, **kwargs):
        self._target = target
        self._ctx = ctx
        self._sock = real_socket.socket(*args, **kwargs)
        # The suite's clients write from two threads at once (the test, and
        # the receiver acknowledging what arrives). A TCP socket takes that;
        # a TLS socket does not (OpenSSL fails with "bad length"), so writes
        # are serialised here to give the suite the socket it assumes.
        self._write_lock = threading.Lock()

    def send(self, data, *args):
        with self._write_lock:
            return self._sock.send(data, *args)

    def sendall(self, data, *args):
        with self._write_lock:
            return self._sock.sendall(data, *args)

    def connect(self, _address):
        self._sock.connect(self._target)
        if self._ctx is not None:
            self._sock = self._ctx.wrap_socket(self._sock)

    def shutdown(self, how):
        # The suite only wants the TCP connection gone; a TLS close_notify
        # exchange could wait on a broker that already closed its side.
        try:
            real_socket.socket.shutdown(self._sock, how)
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._sock, name)


def patched_socket_module(target, ctx):
    module = types.ModuleType("socket")
    module.__dict__.update(real_socket.__dict__)
    module.socket = lambda *a, **k: RedirectedSocket(target, ctx, *a, **k)
    return module


def main():
    suite_dir, suite_file, test_id = sys.argv[1:4]
    target = (
        os.environ.get("PAHO_TARGET_HOST", "127.0.0.1"),
        int(os.environ.get("PAHO_TARGET_PORT", "1883")),
    )
    sys.path.insert(0, suite_dir)
    os.chdir(suite_dir)
    import mqtt.clients.V311.main as v311
    import mqtt.clients.V5.main as v5

    shim = patched_socket_module(target, tls_context())
    v311.socket = shim
    v5.socket = shim
    # The suite's own argument parsing sees only the test to run.
    sys.argv = [suite_file, test_id]
    runpy.run_path(os.path.join(suite_dir, suite_file), run_name="__main__")


if __name__ == "__main__":
    main()
