"""The HTTP side of an OCI distribution registry (the distribution spec's v2
API), standard library only, shared by the client workflows (``images pull``
and ``push``, fusesnap/client/registry.py) and the daemon's lazy layers
(fusesnap/remote.py), which fetch ranges of eStargz blobs.

:class:`Reference` parses ``[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]`` as
docker does (no host: ``docker.io``, one-part names under ``library/``).
:class:`Session` talks to one registry about one repository: HTTPS (a
``--ca`` file adds a CA) or, only when asked, plain HTTP; anonymous, HTTP
basic or bearer-token auth (a token from the realm a 401's
``WWW-Authenticate`` names, asked with the credentials if there are any).
Credentials come from the caller (``--creds``) or from the Docker config
file (:func:`docker_credentials`).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import urllib.parse
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_DOCUMENT = 4 << 20
"""Largest index, manifest, config or token answer read (bytes)."""

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
TIMEOUT = 60.0
MAX_REDIRECTS = 5


class RegistryError(Exception):
    """The registry refused, failed, or returned something invalid."""


# ---------------------------------------------------------------------- references

_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest = text.partition("@")
        if digest and not _DIGEST.match(digest):
            raise RegistryError(f"{text}: invalid digest {digest!r}")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, path = first, remainder
        else:
            host, path = DOCKER_HUB, rest
        tag = ""
        if ":" in path.rpartition("/")[2]:
            path, _, tag = path.rpartition(":")
            if not _TAG.match(tag):
                raise RegistryError(f"{text}: invalid tag {tag!r}")
        if host == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not _REPO.match(path):
            raise RegistryError(f"{text}: invalid repository name {path!r}")
        if not tag and not digest:
            tag = "latest"
        return cls(host, path, tag, digest)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else "") \
            + (f"@{self.digest}" if self.digest else "")

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host


def docker_credentials(host: str, config: Path | None = None) -> tuple[str, str] | None:
    """The user and password the Docker config file (``$DOCKER_CONFIG/config.json``,
    default ``~/.docker/config.json``) has for `host` in ``auths`` (a base64
    ``auth`` of ``user:password``, or ``username`` and ``password``), as
    docker, podman and skopeo read it. None if there are none."""
    if config is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.join(Path.home(), ".docker")
        config = Path(base) / "config.json"
    try:
        doc = json.loads(config.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(f"{config}: {e}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    names = [host]
    if host == DOCKER_HUB:
        names += ["https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB_API]
    for key, entry in auths.items():
        plain = re.sub(r"^https?://", "", key).rstrip("/")
        if (key in names or plain in names or plain.split("/")[0] == host) \
                and isinstance(entry, dict):
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise RegistryError(f"{config}: the auth entry of {key} is not "
                                        "base64 of user:password") from None
                if sep:
                    return user, password
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return entry["username"], entry["password"]
    return None


# ---------------------------------------------------------------------- the registry


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` -> ("bearer", {realm, service})."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in
                            re.findall(r'(\w+)="([^"]*)"', params)}


IDLE_MAX = 4
"""Idle connections a session keeps per host for its next requests."""
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
         ConnectionAbortedError)
"""What a request on a kept connection that the server has closed meanwhile raises."""


class Session:
    """One repository of one registry (see the module docstring). Thread-safe:
    a request has a connection to itself until its response is done; one
    read to its end by :meth:`done` is kept for the next request (HTTP
    keep-alive: a request then costs one round trip, not two, or three or
    four with TLS)."""

    def __init__(self, ref: Reference, *, creds: tuple[str, str] | None = None,
                 ca: str | None = None, plain_http: bool = False,
                 timeout: float = TIMEOUT, push: bool = False) -> None:
        self.ref = ref
        self.push = push
        self.creds = creds
        self.plain_http = plain_http
        self.timeout = timeout
        self._auth: str | None = None
        self._lock = threading.Lock()
        self._connections: weakref.WeakKeyDictionary[
            http.client.HTTPResponse, tuple[http.client.HTTPConnection, tuple[str, bool]]] = \
            weakref.WeakKeyDictionary()
        self._idle: dict[tuple[str, bool], list[http.client.HTTPConnection]] = {}
        self._context: ssl.SSLContext | None = None
        if not plain_http:
            try:
                self._context = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"--ca {ca}: {e}") from None

    # http ---------------------------------------------------------------

    def _connect(self, netloc: str, https: bool) -> http.client.HTTPConnection:
        if https:
            return http.client.HTTPSConnection(netloc, timeout=self.timeout,
                                               context=self._context)
        return http.client.HTTPConnection(netloc, timeout=self.timeout)

    def _take(self, key: tuple[str, bool]) -> tuple[http.client.HTTPConnection, bool]:
        """A kept connection to `key` (netloc, https), or a new one; whether kept."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._connect(*key), False

    def done(self, resp: http.client.HTTPResponse) -> None:
        """Close `resp`; its connection is kept for the next request when the
        response was read to its end and the server keeps it open."""
        with self._lock:
            conn, key = self._connections.pop(resp, (None, ("", False)))
        keep = conn is not None and resp.isclosed() and not resp.will_close \
            and conn.sock is not None
        resp.close()
        if conn is None:
            return
        if keep:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < IDLE_MAX:
                    idle.append(conn)
                    return
        conn.close()

    def _exchange(self, key: tuple[str, bool], method: str, path: str, body: bytes | None,
                  headers: dict[str, str]
                  ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One request and its response's head, on a kept connection if there
        is one, or again on a new one if the server had closed that."""
        conn, kept = self._take(key)
        while True:
            try:
                conn.request(method, path, body=body, headers=headers)
                return conn, conn.getresponse()
            except STALE:
                conn.close()
                if not kept:
                    raise
            except BaseException:
                conn.close()
                raise
            conn, kept = self._connect(*key), False

    def _send(self, url: str, headers: dict[str, str], method: str = "GET",
              body: bytes | None = None) -> http.client.HTTPResponse:
        """`method` `url` (with `body`), following redirects (the auth header
        only to the registry; GET and HEAD only)."""
        for _ in range(MAX_REDIRECTS):
            parts = urllib.parse.urlsplit(url)
            key = (parts.netloc, parts.scheme == "https")
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn, resp = self._exchange(key, method, path, body, headers)
            except ssl.SSLCertVerificationError as e:
                raise RegistryError(f"{parts.netloc}: TLS certificate not trusted "
                                    f"({e.verify_message}); give its CA with --ca FILE") from None
            except ssl.SSLError as e:
                raise RegistryError(f"{parts.netloc}: TLS handshake failed ({e.reason}); "
                                    "a registry on plain HTTP needs --plain-http") from None
            except (OSError, http.client.HTTPException) as e:
                if not self.plain_http and isinstance(e, http.client.BadStatusLine):
                    raise RegistryError(f"{parts.netloc}: not a TLS server") from None
                raise RegistryError(f"{parts.netloc}: {e}") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location") \
                    and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, resp.getheader("Location", ""))
                resp.close()
                conn.close()
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            with self._lock:
                self._connections[resp] = (conn, key)
            return resp
        raise RegistryError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def abort(self) -> None:
        """Shut down the connection of every response still open: reads
        blocked in other threads return at once."""
        with self._lock:
            conns = [conn for conn, _ in self._connections.values()]
        for conn in conns:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _url(self, path: str) -> str:
        scheme = "http" if self.plain_http else "https"
        return f"{scheme}://{self.ref.api_host}/v2/{self.ref.repository}/{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """GET ``/v2/REPOSITORY/path`` with auth (one 401 answered, then final);
        a response of status 200 or 206; RegistryError otherwise."""
        return self.request("GET", path, headers)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None, ok: tuple[int, ...] = (200, 206)
                ) -> http.client.HTTPResponse:
        """`method` ``/v2/REPOSITORY/path`` (or `path` itself if it is a URL,
        e.g. an upload's Location) with auth: a 401 is answered and the
        request sent again (`body` is bytes, so it can be); a response whose
        status is in `ok`, RegistryError otherwise."""
        headers = dict(headers or {})
        url = path if "://" in path else self._url(path)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            if self._auth:
                headers["Authorization"] = self._auth
            resp = self._send(url, headers, method, body)
            if resp.status != 401:
                break
            challenge = resp.getheader("WWW-Authenticate", "")
            if method != "HEAD":
                resp.read(65536)
            self.done(resp)
            if attempt == 1 or not challenge:
                who = f"user {self.creds[0]!r}" if self.creds else "anonymous access"
                raise RegistryError(f"{self.ref.api_host}: authentication failed for "
                                    f"{self.ref.repository} ({who}): wrong or missing "
                                    "credentials (--creds USER:PASSWORD or the Docker "
                                    "config file)")
            self._authenticate(challenge)
        if resp.status in ok:
            return resp
        answer = b"" if method == "HEAD" else resp.read(65536)
        self.done(resp)
        if "://" in path:
            path = "blobs/uploads/"
        raise RegistryError(self._describe(resp.status, path, answer))

    def _describe(self, status: int, path: str, body: bytes) -> str:
        kind, _, ref = path.partition("/")
        what = {"blobs": "blob upload" if ref.startswith("uploads/") else f"blob {ref}",
                "manifests": f"manifest {ref}" if ":" in ref
                else f"tag {ref}"}.get(kind, path)
        try:
            errors = json.loads(body).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            detail = ""
        if status == 404:
            return f"{self.ref.api_host}/{self.ref.repository}: {what} not found" + \
                (f" ({detail})" if detail else "")
        return f"{self.ref.api_host}/{self.ref.repository}: {what}: HTTP {status}" + \
            (f" ({detail})" if detail else "")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = _challenge(challenge)
        basic = None
        if self.creds:
            basic = "Basic " + base64.b64encode(":".join(self.creds).encode()).decode()
        if scheme == "basic":
            if basic is None:
                raise RegistryError(f"{self.ref.api_host} needs credentials "
                                    "(--creds USER:PASSWORD or the Docker config file)")
            self._auth = basic
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.ref.api_host}: unsupported authentication "
                                f"{challenge!r}")
        actions = "pull,push" if self.push else "pull"
        query = {"scope": f"repository:{self.ref.repository}:{actions}"}
        if "service" in params:
            query["service"] = params["service"]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + \
            urllib.parse.urlencode(query)
        resp = self._send(url, {"Authorization": basic} if basic else {})
        body = resp.read(MAX_DOCUMENT)
        self.done(resp)
        if resp.status != 200:
            raise RegistryError(f"{self.ref.api_host}: the token server {params['realm']} "
                                f"refused (HTTP {resp.status}): wrong or missing "
                                "credentials (--creds USER:PASSWORD or the Docker config file)")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.ref.api_host}: the token server "
                                f"{params['realm']} returned no token")
        self._auth = f"Bearer {token}"

    # documents ----------------------------------------------------------

    def _read_capped(self, resp: http.client.HTTPResponse, what: str) -> bytes:
        try:
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_DOCUMENT:
                raise RegistryError(f"{what} is {length} bytes, larger than the "
                                    f"{MAX_DOCUMENT} a document may have")
            data = resp.read(MAX_DOCUMENT + 1)
        finally:
            self.done(resp)
        if len(data) > MAX_DOCUMENT:
            raise RegistryError(f"{what} is larger than the {MAX_DOCUMENT} bytes a "
                                "document may have")
        return data

    def read_tail(self, digest: str, length: int) -> tuple[int, bytes]:
        """The size of blob `digest` and its last `length` bytes (all of it
        when smaller), in one suffix Range request (``bytes=-N``) where a
        HEAD and a Range would take two round trips; RegistryError if the
        registry answers otherwise."""
        resp = self.get(f"blobs/{digest}", {"Range": f"bytes=-{length}"})
        found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.getheader("Content-Range", ""))
        first, last, size = (int(g) for g in found.groups()) if found else (0, -1, 0)
        if found and (last != size - 1 or last - first + 1 > length):
            self.done(resp)
            raise RegistryError(f"blob {digest}: bytes {first}-{last} of {size} for "
                                f"its last {length}")
        return size, self._range_body(resp, digest, last - first + 1 if found else -1)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of blob `digest` (an HTTP Range
        request); RegistryError if the registry gives other bytes or fewer."""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        return self._range_body(self.get(f"blobs/{digest}", headers), digest, length)

    def _range_body(self, resp: http.client.HTTPResponse, digest: str, length: int) -> bytes:
        """The `length` bytes of `resp`, a 206 answer to a Range request for
        blob `digest` (`length` -1: a 206 that did not say which bytes);
        RegistryError otherwise. The response is done either way."""
        try:
            if resp.status != 206 or length < 0:
                raise RegistryError(f"blob {digest}: the registry ignored a Range "
                                    f"request (HTTP {resp.status})")
            data = resp.read(length + 1)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"blob {digest}: the download broke off "
                                f"({type(e).__name__}: {e})") from None
        finally:
            self.done(resp)
        if len(data) != length:
            raise RegistryError(f"blob {digest}: {len(data)} bytes for a range of {length}")
        return data


class Body:
    """A blob's response whose failures, an early end included, are RegistryErrors."""

    def __init__(self, resp: http.client.HTTPResponse, digest: str, left: int,
                 stop: threading.Event | None) -> None:
        self.resp = resp
        self.digest = digest
        self.left = left
        self.stop = stop

    def read(self, n: int = -1) -> bytes:
        if self.stop is not None and self.stop.is_set():
            raise RegistryError(f"blob {self.digest}: download stopped")
        try:
            data = self.resp.read(n)
        except (OSError, http.client.HTTPException) as e:
            if self.stop is not None and self.stop.is_set():
                raise RegistryError(f"blob {self.digest}: download stopped") from None
            raise RegistryError(f"blob {self.digest}: the download broke off "
                                f"({type(e).__name__}: {e})") from None
        self.left -= len(data)
        if not data and self.left > 0 and self.stop is not None and self.stop.is_set():
            raise RegistryError(f"blob {self.digest}: download stopped")
        if not data and self.left > 0:
            raise RegistryError(f"blob {self.digest}: the download broke off "
                                f"{self.left} bytes before its end")
        return data

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resp.close()



__all__ = ["MAX_DOCUMENT", "Body", "Reference", "RegistryError", "Session",
           "docker_credentials"]
