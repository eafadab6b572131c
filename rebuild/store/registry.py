"""A client of the OCI distribution API (distribution-spec 1.1), for remote stores.

Raw bytes in, raw bytes out: a manifest is sent and received as the exact bytes whose sha256
is its digest, never re-serialized, so every manifest keeps its digest on every registry.
Existence is asked with HEAD; blobs go up monolithically when small and in chunks (POST,
PATCH with `Content-Range`, PUT `?digest=`) when large, and come down as streams, so memory
stays bounded whatever the size. Every response has a size and a time limit. Whatever comes
down is checked against its digest by the caller before anything is written to a store
(rebuild.store.transfer).

Credentials come from `REBUILD_REGISTRY_USERNAME`/`REBUILD_REGISTRY_PASSWORD` or
`~/.docker/config.json` (`auths.HOST.auth`), and are sent only when the registry asks
(`WWW-Authenticate`: Basic, or the Bearer token flow with realm, service and scope). They
never appear in an error message: errors name the registry, the repository and the status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

from rebuild.errors import EnvironmentProblem, StoreError, UsageError
from rebuild.store.layout import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST

if TYPE_CHECKING:
    import requests

MANIFEST_LIMIT = 4 << 20  # distribution-spec: registries SHOULD accept manifests up to 4 MiB
MONOLITHIC_LIMIT = 8 << 20  # larger blobs go up in chunks of this size
UPLOAD_CHUNK = 8 << 20
READ_CHUNK = 1 << 20
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0  # between two reads of one response
SERVER_ERROR_RETRIES = 3  # a 5xx answer to a request that can be sent again
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX,
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                         r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def is_remote(location: str) -> bool:
    return location.startswith(("oci://", "oci+http://"))


@dataclass(frozen=True)
class RemoteStore:
    """`oci://HOST[:PORT]/REPOSITORY` (HTTPS) or `oci+http://…` (plain HTTP, loopback only)."""

    base: str  # https://HOST[:PORT] or http://…
    host: str  # HOST[:PORT], the key of credentials
    repository: str

    def __str__(self) -> str:
        scheme = "oci+http" if self.base.startswith("http:") else "oci"
        return f"{scheme}://{self.host}/{self.repository}"

    def release_repository(self, name: str) -> str:
        """A release NAME@VERSION lives in REPOSITORY/NAME under the tag VERSION (design.md)."""
        repo = f"{self.repository}/{name}" if self.repository else name
        if not _REPOSITORY.fullmatch(repo):
            raise UsageError(f"release name {name!r} makes the repository name {repo!r}, which "
                             "an OCI registry refuses (lower-case letters, digits, '.', '_', "
                             "'-' and '/'); rename the release or choose another repository")
        return repo


def parse_remote(location: str) -> RemoteStore:
    """Parse a remote store location (exit 2 for anything else)."""
    scheme, _, rest = location.partition("://")
    host, _, repository = rest.partition("/")
    repository = repository.strip("/")
    if scheme not in ("oci", "oci+http") or not host or "@" in host:
        raise UsageError(f"not a remote store: {location!r}; write oci://HOST[:PORT]/REPOSITORY "
                         "(oci+http:// for a plain-HTTP registry on this machine)")
    if repository and not _REPOSITORY.fullmatch(repository):
        raise UsageError(f"{location!r}: {repository!r} is not a valid OCI repository name "
                         "(lower-case letters, digits, '.', '_', '-' and '/')")
    hostname = urlsplit(f"//{host}").hostname or ""
    if scheme == "oci+http" and hostname not in LOOPBACK and f"[{hostname}]" not in LOOPBACK:
        raise UsageError(f"{location!r}: plain HTTP is allowed only on this machine "
                         "(127.0.0.1, localhost, ::1); use oci:// (HTTPS) for another host")
    return RemoteStore(("http://" if scheme == "oci+http" else "https://") + host, host,
                       repository)


def valid_tag(tag: str) -> bool:
    return bool(_TAG.fullmatch(tag))


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # a password never reaches a log line or a traceback
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def find_credentials(host: str, env: Mapping[str, str] | None = None,
                     docker_config: Path | None = None) -> Credentials | None:
    """`REBUILD_REGISTRY_USERNAME`/`PASSWORD`, else `auths.HOST.auth` of Docker's config."""
    env = os.environ if env is None else env
    user, password = env.get("REBUILD_REGISTRY_USERNAME"), env.get("REBUILD_REGISTRY_PASSWORD")
    if user is not None and password is not None:
        return Credentials(user, password)
    if user is not None or password is not None:
        raise UsageError("set both REBUILD_REGISTRY_USERNAME and REBUILD_REGISTRY_PASSWORD, "
                         "or neither")
    config_dir = Path(env.get("DOCKER_CONFIG", Path.home() / ".docker"))
    path = docker_config or config_dir / "config.json"
    try:
        auths = json.loads(path.read_bytes()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        entry = auths.get(key) if isinstance(auths, dict) else None
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        if isinstance(encoded, str):
            try:
                name, sep, secret = base64.b64decode(encoded).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"{path}: auths.{key}.auth is not base64 of USER:PASSWORD; "
                                 "run `docker login` again") from None
            if sep:
                return Credentials(name, secret)
    return None


@dataclass
class Counters:
    """What one client sent: the tests count uploads, the CLI reports them."""

    requests: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    manifests_uploaded: int = 0
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0


class Registry:
    """One registry, spoken to over HTTP(S) with `requests`."""

    def __init__(self, remote: RemoteStore, *, credentials: Credentials | None = None,
                 ca_file: str | None = None) -> None:
        import requests  # lazily: most commands never talk to a registry

        self.remote = remote
        self._credentials = credentials
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy variables, no ~/.netrc credentials
        ca = ca_file if ca_file is not None else os.environ.get("REBUILD_REGISTRY_CA")
        if ca:
            if not Path(ca).is_file():
                raise EnvironmentProblem(f"REBUILD_REGISTRY_CA names {ca}, which is not a file; "
                                         "point it at the PEM file of the registry's CA")
            self._session.verify = ca
        self._authorization: dict[str, str] = {}  # scope -> Authorization header value
        self.counters = Counters()

    @classmethod
    def connect(cls, remote: RemoteStore) -> Registry:
        return cls(remote, credentials=find_credentials(remote.host))

    def close(self) -> None:
        self._session.close()

    # -- requests --------------------------------------------------------------------------

    def _url(self, repo: str, tail: str) -> str:
        return f"{self.remote.base}/v2/{repo}/{tail}"

    def request(self, method: str, url: str, repo: str, *, push: bool = False,
                headers: Mapping[str, str] | None = None, data: Any = None,
                stream: bool = False) -> requests.Response:
        """One request, authenticated when the registry asks (401: Basic, or a Bearer token
        for `repository:REPO:pull[,push]`); connection problems and refused credentials exit
        3 with what to do. A GET, HEAD or PUT whose body can be sent again is retried on a
        passing server error (5xx): Debian's registry answers 500 to a tag read while
        another writer replaces it."""
        again = method in ("GET", "HEAD", "PUT") and (
            data is None or isinstance(data, bytes) or hasattr(data, "seek"))
        def send() -> requests.Response:
            return self._authorized(method, url, repo, push=push, headers=headers, data=data,
                                    stream=stream)

        response = send()
        for retry in range(1, SERVER_ERROR_RETRIES + 1 if again else 1):
            if response.status_code < 500:
                break
            response.close()
            time.sleep(0.2 * retry)
            if hasattr(data, "seek"):
                data.seek(0)
            response = send()
        return response

    def _authorized(self, method: str, url: str, repo: str, *, push: bool,
                    headers: Mapping[str, str] | None, data: Any,
                    stream: bool) -> requests.Response:
        import requests

        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        for attempt in range(2):
            sent = dict(headers or {})
            if scope in self._authorization:
                sent["Authorization"] = self._authorization[scope]
            if attempt and hasattr(data, "seek"):
                data.seek(0)
            try:
                self.counters.requests += 1
                response = self._session.request(method, url, headers=sent, data=data,
                                                 stream=stream, allow_redirects=True,
                                                 timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            except requests.exceptions.SSLError:
                raise EnvironmentProblem(
                    f"TLS with the registry {self.remote.host} failed (its certificate is not "
                    "trusted or does not name it); set REBUILD_REGISTRY_CA=FILE to the PEM of "
                    "the CA that signed it") from None
            except requests.exceptions.RequestException as exc:
                raise EnvironmentProblem(
                    f"the registry {self.remote.host} is unreachable ({type(exc).__name__}); "
                    f"check that it runs and that {self.remote} is right, then run again"
                ) from None
            if response.status_code != 401 or attempt:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authorization[scope] = self._authorize(challenge, scope)
        if response.status_code in (401, 403):
            response.close()
            who = (f"the credentials of {self._credentials.username!r}" if self._credentials
                   else "no credentials")
            raise EnvironmentProblem(
                f"the registry {self.remote.host} refused {who} for {repo} (HTTP "
                f"{response.status_code}); set REBUILD_REGISTRY_USERNAME and "
                "REBUILD_REGISTRY_PASSWORD (or `docker login` the registry) with an account "
                f"that may {'push to' if push else 'pull from'} it")
        return response

    def _authorize(self, challenge: str, scope: str) -> str:
        import requests

        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE.findall(params_text))
        creds = self._credentials
        if kind.lower() == "basic":
            if creds is None:
                return ""
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            return f"Basic {token}"
        if kind.lower() != "bearer" or "realm" not in params:
            return ""
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        auth = (creds.username, creds.password) if creds else None
        try:
            self.counters.requests += 1
            answer = self._session.get(params["realm"], params=query, auth=auth,
                                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.exceptions.RequestException as exc:
            raise EnvironmentProblem(f"the token service of {self.remote.host} is unreachable "
                                     f"({type(exc).__name__}); check the registry") from None
        if answer.status_code != 200:
            return ""  # the retried request fails with 401 and says what to do
        bearer: Any = None
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(answer.content[:MANIFEST_LIMIT])
            bearer = body.get("token") or body.get("access_token")
        return f"Bearer {bearer}" if isinstance(bearer, str) else ""

    def _fail(self, response: requests.Response, what: str) -> StoreError | EnvironmentProblem:
        status = response.status_code
        response.close()
        if status == 404:
            return StoreError(f"{what} is missing from {self.remote}")
        return EnvironmentProblem(f"the registry {self.remote.host} answered HTTP {status} to "
                                  f"{what}; check the registry and run again")

    # -- blobs -----------------------------------------------------------------------------

    def has_blob(self, repo: str, digest: str) -> bool:
        response = self.request("HEAD", self._url(repo, f"blobs/{digest}"), repo)
        response.close()
        if response.status_code in (200, 307):
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"blob {digest} in {repo}")

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> bool:
        """Link a blob the registry already holds in `source_repo` into `repo` without
        sending its bytes (cross-repository mount); False when the registry would rather
        take an upload (its session is cancelled: the caller uploads)."""
        start = self.request("POST", self._url(
            repo, f"blobs/uploads/?mount={quote(digest)}&from={quote(source_repo)}"), repo,
            push=True, headers={"Content-Length": "0"})
        status, location = start.status_code, start.headers.get("Location")
        start.close()
        if status == 201:
            return True
        if status == 202 and location:
            self.request("DELETE", urljoin(start.url, location), repo, push=True).close()
            return False
        raise self._fail(start, f"mounting blob {digest} into {repo}")

    def push_blob(self, repo: str, digest: str, size: int, source: Readable,
                  progress: Callable[[int], None] | None = None) -> None:
        """Upload a blob read from `source`: in one PUT when small, else in chunks, holding at
        most one chunk in memory. The registry checks the digest on the final PUT."""
        start = self.request("POST", self._url(repo, "blobs/uploads/"), repo, push=True,
                             headers={"Content-Length": "0"})
        if start.status_code != 202 or "Location" not in start.headers:
            raise self._fail(start, f"starting an upload to {repo}")
        location = urljoin(start.url, start.headers["Location"])
        start.close()
        if size <= MONOLITHIC_LIMIT:
            data = source.read(size + 1)
            if len(data) != size:
                raise StoreError(f"blob {digest} has {len(data)} bytes, not {size}")
            self._finish_upload(repo, location, digest, data)
            self.counters.bytes_uploaded += size
            return
        sent = 0
        while sent < size:
            chunk = source.read(min(UPLOAD_CHUNK, size - sent))
            if not chunk:
                raise StoreError(f"blob {digest} ended after {sent} of {size} bytes")
            response = self.request(
                "PATCH", location, repo, push=True, data=chunk,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                         "Content-Length": str(len(chunk))})
            if response.status_code != 202 or "Location" not in response.headers:
                raise self._fail(response, f"uploading blob {digest} to {repo}")
            location = urljoin(response.url, response.headers["Location"])
            response.close()
            sent += len(chunk)
            self.counters.bytes_uploaded += len(chunk)
            if progress is not None:
                progress(sent)
        self._finish_upload(repo, location, digest, b"")

    def _finish_upload(self, repo: str, location: str, digest: str, data: bytes) -> None:
        joiner = "&" if "?" in location else "?"
        response = self.request("PUT", f"{location}{joiner}digest={quote(digest)}", repo,
                                push=True, data=data,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(len(data))})
        if response.status_code != 201:
            if response.status_code == 400:
                response.close()
                raise StoreError(f"the registry {self.remote.host} refused blob {digest}: its "
                                 "bytes do not match the digest; run `rebuild store fsck`")
            raise self._fail(response, f"finishing the upload of {digest} to {repo}")
        response.close()
        self.counters.blobs_uploaded += 1

    @contextlib.contextmanager
    def open_blob(self, repo: str, digest: str, size: int, offset: int = 0
                  ) -> Iterator[Iterator[bytes]]:
        """Stream a blob's bytes from `offset` (a Range GET), at most `size - offset` of them,
        within a time limit that grows with the size. The caller hashes what it gets."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.request("GET", self._url(repo, f"blobs/{digest}"), repo,
                                headers=headers, stream=True)
        if response.status_code not in (200, 206):
            raise self._fail(response, f"blob {digest} in {repo}")
        skip = offset if offset and response.status_code == 200 else 0  # Range ignored
        deadline = time.monotonic() + 300 + size / (1 << 20)  # at least 1 MiB/s
        remaining = size - offset

        def chunks() -> Iterator[bytes]:
            nonlocal skip, remaining
            for chunk in response.iter_content(READ_CHUNK):
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"downloading {digest} from {self.remote.host} "
                                             "took too long; run again to resume")
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if len(chunk) > remaining:
                    raise StoreError(f"blob {digest} from {self.remote} is larger than its "
                                     f"{size} bytes; nothing of it was stored")
                remaining -= len(chunk)
                self.counters.bytes_downloaded += len(chunk)
                yield chunk

        try:
            yield chunks()
        finally:
            response.close()

    # -- manifests and tags ------------------------------------------------------------------

    def has_manifest(self, repo: str, reference: str) -> bool:
        response = self.request("HEAD", self._url(repo, f"manifests/{reference}"), repo,
                                headers={"Accept": ACCEPT})
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"manifest {reference} in {repo}")

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """The manifest's exact bytes and media type, or None when there is none. By digest,
        the bytes are checked against it (exit 5 on a mismatch)."""
        response = self.request("GET", self._url(repo, f"manifests/{reference}"), repo,
                                headers={"Accept": ACCEPT}, stream=True)
        if response.status_code == 404:
            response.close()
            return None
        if response.status_code != 200:
            raise self._fail(response, f"manifest {reference} in {repo}")
        data = _read_limited(response, MANIFEST_LIMIT, f"manifest {reference} in {repo}")
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        if reference.startswith("sha256:") and _sha256(data) != reference:
            raise StoreError(f"manifest {reference} from {self.remote} does not match its "
                             "digest; nothing was stored")
        return data, media

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> bool:
        """PUT a manifest's bytes as they are; True when the registry says it indexed the
        subject itself (`OCI-Subject`: it has the referrers API)."""
        response = self.request("PUT", self._url(repo, f"manifests/{reference}"), repo,
                                push=True, data=data,
                                headers={"Content-Type": media_type,
                                         "Content-Length": str(len(data))})
        if response.status_code != 201:
            if response.status_code == 400:
                detail = response.text[:300].replace("\n", " ")
                response.close()
                raise StoreError(f"the registry {self.remote.host} refused manifest "
                                 f"{reference} in {repo}: {detail}")
            raise self._fail(response, f"storing manifest {reference} in {repo}")
        response.close()
        self.counters.manifests_uploaded += 1
        return "OCI-Subject" in response.headers

    def tags(self, repo: str) -> list[str]:
        """Every tag of the repository (following `Link` pagination)."""
        return self._pages(self._url(repo, "tags/list?n=1000"), repo, "tags",
                           f"the tags of {repo}")

    def catalog(self) -> list[str]:
        """Every repository the registry lists in `/v2/_catalog` (following `Link`
        pagination); a registry without a catalog lists none."""
        return self._pages(f"{self.remote.base}/v2/_catalog?n=1000", self.remote.repository,
                           "repositories", f"the catalog of {self.remote.host}")

    def _pages(self, first: str, repo: str, key: str, what: str) -> list[str]:
        url: str | None = first
        found: list[str] = []
        while url is not None:
            response = self.request("GET", url, repo, stream=True)
            if response.status_code == 404:
                response.close()
                return found
            if response.status_code != 200:
                raise self._fail(response, what)
            data = _read_limited(response, MANIFEST_LIMIT, what)
            try:
                page = json.loads(data).get(key) or []
            except (ValueError, AttributeError):
                page = []
            found += [t for t in page if isinstance(t, str)]
            link = response.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            url = urljoin(response.url, match.group(1)) if match else None
        return found

    def referrers_api(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        """The referrers API's list (an image index's `manifests`), or None when the registry
        has no such API (distribution 2.x answers 404)."""
        response = self.request("GET", self._url(repo, f"referrers/{digest}"), repo,
                                headers={"Accept": OCI_INDEX}, stream=True)
        if response.status_code != 200:
            response.close()
            return None
        data = _read_limited(response, MANIFEST_LIMIT, f"the referrers of {digest}")
        return index_entries(data)


def index_entries(data: bytes) -> list[dict[str, Any]] | None:
    """The descriptors of an image index, or None when `data` is no image index (GitLab
    answers a fallback tag with the subject manifest itself)."""
    try:
        index = json.loads(data)
    except ValueError:
        return None
    if not isinstance(index, dict) or index.get("mediaType", OCI_INDEX) not in INDEX_TYPES \
            or not isinstance(index.get("manifests"), list) or "layers" in index:
        return None
    return [d for d in index["manifests"] if isinstance(d, dict)
            and isinstance(d.get("digest"), str) and d.get("mediaType") in MANIFEST_TYPES
            and isinstance(d.get("size"), int)]


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_content(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            response.close()
            raise StoreError(f"{what} is larger than {limit} bytes; refused")
    response.close()
    return bytes(data)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
