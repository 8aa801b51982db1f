"""Resumes a TLS session with Onramp's MQTT listener, with Python's own TLS
(OpenSSL), to show that a resumed session is admitted while its certificate
is good and refused once it is revoked.

    tls_resume.py HOST PORT CAFILE CERT KEY CLIENT_ID

Prints one line per step. After the control steps it prints `ready` and
waits for a line on standard input (the caller revokes the certificate),
then resumes once more and prints how that ended.
"""

import socket
import ssl
import sys


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    # MQTT 3.1.1 CONNECT: protocol name, level 4, clean session, keep-alive 60.
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def attempt(ctx, host, port, client_id, session):
    """One connection: returns (resumed, outcome, session)."""
    raw = socket.create_connection((host, port), timeout=10)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return False, f"tls-refused {type(e).__name__}", None
    resumed = tls.session_reused
    try:
        tls.sendall(connect_packet(client_id))
        reply = tls.recv(4)
    except (ssl.SSLError, OSError) as e:
        reply = b""
        outcome = f"closed {type(e).__name__}"
    else:
        if len(reply) == 4 and reply[0] == 0x20:
            outcome = f"connack {reply[3]}"
        elif not reply:
            outcome = "closed eof"
        else:
            outcome = f"unexpected {reply.hex()}"
    # The ticket arrives after the handshake; reading the CONNACK took it in.
    kept = tls.session
    try:
        if outcome == "connack 0":
            tls.sendall(b"\xe0\x00")
        tls.close()
    except (ssl.SSLError, OSError):
        pass
    return resumed, outcome, kept


def main():
    host, port, cafile, cert, key, client_id = sys.argv[1:7]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    resumed, outcome, session = attempt(ctx, host, int(port), client_id, None)
    print(f"full resumed={resumed} {outcome}", flush=True)
    resumed, outcome, session = attempt(ctx, host, int(port), client_id, session)
    print(f"control resumed={resumed} {outcome}", flush=True)
    print("ready", flush=True)
    sys.stdin.readline()
    resumed, outcome, _ = attempt(ctx, host, int(port), client_id, session)
    print(f"after-revocation resumed={resumed} {outcome}", flush=True)


if __name__ == "__main__":
    main()
