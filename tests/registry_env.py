"""Real OCI distribution registries for the pull tests (issue 20): Debian's
``docker-registry`` (distribution 2.8) on 127.0.0.1, each with a
configuration and a storage directory of its own, stopped by its PID.

- :func:`start_registry` with no auth on plain HTTP, or with ``htpasswd``
  basic auth and TLS from a test CA (:func:`make_ca`), or with ``token`` auth
  answered by :class:`TokenServer` (a small JWT issuer written here, RS256
  signed with ``openssl``, its certificate in the registry's
  ``rootcertbundle`` and in each token's ``x5c`` header).
- :func:`skopeo_copy` fills one from an OCI archive that tests/oci.py wrote.
- :class:`Proxy` sits in front of a plain-HTTP registry to corrupt one blob,
  cut one off after some bytes, or serve a manifest of its own; it records
  the Range headers it saw. With `rate` and `rtt` it also models a network
  link (the benchmarks' ``--link``): response bodies streamed through one
  shared :class:`TokenBucket`, each response's first byte `rtt` late, and
  a new connection's first request `rtt` later still (its TCP handshake).

Nothing here talks to anything but 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY = "/usr/bin/docker-registry"
NEEDED = {REGISTRY: "docker-registry", "skopeo": "skopeo", "htpasswd": "apache2-utils",
          "openssl": "openssl"}
SERVICE = "fusesnap-test-registry"
ISSUER = "fusesnap-test-issuer"


def missing() -> str:
    """What is not installed, as a skip reason ("" if all is there)."""
    gone = sorted({pkg for cmd, pkg in NEEDED.items() if not shutil.which(cmd)})
    return f"needs Debian's {', '.join(gone)} (make setup)" if gone else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Ca:
    cert: Path
    server_cert: Path
    server_key: Path


def make_ca(directory: Path) -> Ca:
    """A test CA and a certificate it signed for 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca_cert), "-days", "2", "-subj", "/CN=fusesnap test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Ca(ca_cert, cert, key)


# ---------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A bearer-token issuer on 127.0.0.1 (the distribution token flow): GET
    /token?service=…&scope=repository:NAME:pull with HTTP basic credentials
    ``user``/``password`` (or none, for anonymous pull when `anonymous_pull`)
    returns ``{"token": JWT}``; wrong credentials get 401."""

    def __init__(self, directory: Path, user: str, password: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = directory / "token.key", directory / "token.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                 "-out", str(self.cert), "-days", "2", "-subj", "/CN=fusesnap token issuer")
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.x5c = base64.b64encode(der).decode()
        self.user, self.password = user, password
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                good = "Basic " + base64.b64encode(
                    f"{server.user}:{server.password}".encode()).decode()
                if auth != good:
                    self.send_response(401)
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    access.append({"type": kind, "name": name,
                                   "actions": actions.split(",")})
                body = json.dumps({"token": server.token(access)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": hashlib.sha256(
                      f"{now}{time.monotonic_ns()}".encode()).hexdigest()[:16],
                  "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing.encode(), capture_output=True, check=True,
                             timeout=30).stdout
        return f"{signing}.{_b64url(sig)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------- registries


@dataclass
class Registry:
    host: str
    directory: Path
    process: subprocess.Popen[bytes]
    tls: bool
    creds: tuple[str, str] | None = None
    token: TokenServer | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.token is not None:
            self.token.stop()


def start_registry(directory: Path, *, ca: Ca | None = None,
                   creds: tuple[str, str] | None = None,
                   token: TokenServer | None = None) -> Registry:
    """docker-registry on 127.0.0.1 with storage in `directory`: TLS if `ca`,
    htpasswd auth if `creds` (without `token`), token auth if `token`."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: list[str] = [
        "version: 0.1",
        "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {directory / 'storage'}",
        "  delete:", "    enabled: true",
        "http:", f"  addr: 127.0.0.1:{port}",
    ]
    if ca is not None:
        config += ["  tls:", f"    certificate: {ca.server_cert}", f"    key: {ca.server_key}"]
    if token is not None:
        config += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {SERVICE}",
                   f"    issuer: {ISSUER}", f"    rootcertbundle: {token.cert}"]
    elif creds is not None:
        htpasswd = subprocess.run(["htpasswd", "-Bbn", *creds], capture_output=True,
                                  text=True, check=True, timeout=60).stdout
        (directory / "htpasswd").write_text(htpasswd)
        config += ["auth:", "  htpasswd:", "    realm: fusesnap-test",
                   f"    path: {directory / 'htpasswd'}"]
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    log = open(directory / "registry.log", "wb")  # noqa: SIM115 (the process holds it)
    process = subprocess.Popen([REGISTRY, "serve", str(directory / "config.yml")],
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    reg = Registry(f"127.0.0.1:{port}", directory, process, ca is not None, creds, token)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = (directory / "registry.log").read_text()
            raise RuntimeError(f"docker-registry exited: {log_text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return reg
        except OSError:
            time.sleep(0.05)
    reg.stop()
    raise RuntimeError("docker-registry did not listen within 20 s")


def skopeo_copy(archive: Path, registry: Registry, repo_tag: str, fmt: str = "") -> None:
    """`skopeo copy oci-archive:ARCHIVE docker://HOST/REPO:TAG` (`fmt` v2s2:
    converted to Docker v2 schema 2 media types)."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if fmt:
        cmd.append(f"--format={fmt}")
    if registry.creds:
        cmd.append(f"--dest-creds={registry.creds[0]}:{registry.creds[1]}")
    cmd += [f"oci-archive:{archive}", f"docker://{registry.host}/{repo_tag}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(registry.directory)})
    assert proc.returncode == 0, proc.stderr


def put_manifest(registry: Registry, repo: str, ref: str, data: bytes, media_type: str) -> None:
    """PUT a manifest or index (the registry's own API; anonymous registries)."""
    conn = http.client.HTTPConnection(registry.host, timeout=30)
    conn.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data,
                 headers={"Content-Type": media_type})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 201, (resp.status, body)


# ---------------------------------------------------------------------- a proxy


CHUNK = 64 * 1024
"""The largest piece of a body the :class:`Proxy` writes at once."""


class TokenBucket:
    """One link's bandwidth, shared by every thread that sends on it: `rate`
    bytes per second, bursts of at most `burst` bytes after an idle spell.
    :meth:`take` reserves bytes in the order it is called (the bucket may go
    into debt) and sleeps until the link has carried them, so that streams
    sending at once share the rate."""

    def __init__(self, rate: float, burst: int = CHUNK) -> None:
        if rate <= 0:
            raise ValueError(f"a link's rate must be positive, not {rate}")
        self.rate, self.burst = float(rate), burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate
        if wait > 0:
            time.sleep(wait)


def link(spec: str) -> tuple[float, float]:
    """``MBIT/RTT_MS`` (e.g. ``100/20``) as (bytes per second, seconds): the
    `rate` and `rtt` of a :class:`Proxy` that models that link."""
    mbit, sep, ms = spec.partition("/")
    try:
        rate, rtt = float(mbit) * 1e6 / 8, float(ms) / 1000
        if not sep:
            raise ValueError(spec)
    except ValueError:
        rate = rtt = -1.0
    if not rate > 0 or not rtt >= 0 or rate == float("inf") or rtt == float("inf"):
        raise ValueError(f"a link is MBIT/RTT_MS, e.g. 100/20 (Mbit/s > 0, ms ≥ 0), not {spec!r}")
    return rate, rtt


@dataclass
class Proxy:
    """A plain-HTTP proxy on 127.0.0.1 to `upstream` (host:port, plain HTTP)."""

    upstream: str
    corrupt: set[str] = field(default_factory=set)
    """Blob digests whose bytes get one byte flipped."""
    cut: dict[str, int] = field(default_factory=dict)
    """Blob digest -> bytes after which the connection is dropped."""
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """Path suffix ``REPO/manifests/REF`` -> (media type, body) served instead."""
    stall: dict[str, int] = field(default_factory=dict)
    """Blob digest -> bytes after which the response waits for `release`
    (20 s at most), then drops the connection."""
    ranges: list[tuple[str, str]] = field(default_factory=list)
    """(path, Range header) of every request that had one."""
    tail_only: bool = False
    """Ranges of blobs are served only when they reach the blob's last 52
    bytes and were asked for as a suffix (``bytes=-N``) or start after byte 0
    (an eStargz footer, a TOC); other Range requests are answered 503,
    as by a registry that cannot serve them (whole blobs pass)."""
    refused_starts: set[str] = field(default_factory=set)
    """Blob digests whose Range requests from byte 0 are answered 503: a lazy
    layer's background download (which starts there) cannot proceed, while a
    file's chunks (never at 0: an eStargz layer starts with its landmark)
    can be fetched."""
    gets: list[tuple[str, str]] = field(default_factory=list)
    """(path, Range header or "") of every blob GET."""
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    rate: float | None = None
    """Bytes per second of a modelled link: response bodies are streamed in
    pieces of at most CHUNK bytes, all connections' together paced by one
    :class:`TokenBucket` (None: no pacing)."""
    rtt: float = 0.0
    """Seconds from a request to its response's first byte, at least (a
    modelled link's round trip; the registry's own time counts in it), and
    once more before a new connection's first request (its TCP handshake)."""
    drop_kept: bool = False
    """After each response the connection is closed, though the response did
    not say so (as by a server's idle timeout): a client that kept it fails
    its next request on it."""
    connections: int = 0
    """Connections accepted so far."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        proxy = self
        self.bucket = TokenBucket(self.rate) if self.rate is not None else None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections += 1
                if proxy.rtt:
                    time.sleep(proxy.rtt)  # a new connection's TCP handshake

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                proxy.handle(self)

            def do_HEAD(self) -> None:  # noqa: N802
                proxy.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        start = time.monotonic()
        if h.headers.get("Range"):
            self.ranges.append((h.path, h.headers["Range"]))
        self.respond(h, start)
        if self.drop_kept and not h.close_connection:
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ responses

    def respond(self, h: http.server.BaseHTTPRequestHandler, start: float) -> None:
        """The response: its first byte not before `start` + `rtt`, its body
        streamed from upstream in pieces of at most CHUNK bytes, each paced
        by the shared bucket when `rate` is set."""
        try:
            for suffix, (media_type, body) in self.manifests.items():
                if h.path.endswith(suffix):
                    self._after(start)
                    h.send_response(200)
                    h.send_header("Content-Type", media_type)
                    h.send_header("Content-Length", str(len(body)))
                    h.end_headers()
                    if h.command != "HEAD":
                        self._paced(h, body)
                    return
            conn = http.client.HTTPConnection(self.upstream, timeout=30)
            try:
                self._relay(h, conn, start)
            finally:
                conn.close()
        except (ConnectionError, TimeoutError):
            h.close_connection = True  # the client went away, or upstream: no more on it

    def _relay(self, h: http.server.BaseHTTPRequestHandler, conn: http.client.HTTPConnection,
               start: float) -> None:
        # Every Accept header, joined (skopeo sends one per media type it takes).
        headers = {k: ", ".join(h.headers.get_all(k) or []) for k in ("Accept", "Range")
                   if h.headers.get(k) is not None}
        conn.request(h.command, h.path, headers=headers)
        resp = conn.getresponse()
        digest = h.path.rpartition("/")[2]
        blob = "/blobs/" in h.path
        if blob and h.command == "GET":
            self.gets.append((h.path, h.headers.get("Range", "")))
            tail = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)",
                                resp.getheader("Content-Range", ""))
            refused = digest in self.refused_starts and \
                h.headers.get("Range", "").startswith("bytes=0-")
            suffix = h.headers.get("Range", "").startswith("bytes=-")
            if refused or self.tail_only and resp.status == 206 and not (
                    tail and (suffix or int(tail[1]) > 0)
                    and int(tail[2]) >= int(tail[3]) - 52):
                self._after(start)
                h.send_response(503)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        length = resp.getheader("Content-Length")
        whole: bytes | None = None
        if h.command != "HEAD" and (length is None or not length.isdigit()):
            whole = resp.read()  # no length to stream by (chunked): read it all first
            length = str(len(whole))
        self._after(start)
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                h.send_header(k, v)
        h.send_header("Content-Length", length or "0")
        h.end_headers()
        if h.command == "HEAD":
            return
        limit = self.cut.get(digest, self.stall.get(digest)) if blob else None
        size = int(length or 0)
        end = size if limit is None else min(limit, size)
        sent = 0
        while sent < end:
            n = min(CHUNK, end - sent)
            piece = whole[sent:sent + n] if whole is not None else resp.read(n)
            if not piece:
                break  # upstream ended early: so does the client's body, below
            if sent == 0 and digest in self.corrupt and blob:
                piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
            self._paced(h, piece)
            sent += len(piece)
        if limit is not None or sent < size:
            h.wfile.flush()
            if digest in self.stall:
                self.stalled.set()
                self.release.wait(20)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    def _after(self, start: float) -> None:
        """Sleep until `rtt` after `start`."""
        late = start + self.rtt - time.monotonic()
        if late > 0:
            time.sleep(late)

    def _paced(self, h: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        """Write `data` in pieces of at most CHUNK bytes, each once the link
        has room for it."""
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            if self.bucket is not None:
                self.bucket.take(len(piece))
            h.wfile.write(piece)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
