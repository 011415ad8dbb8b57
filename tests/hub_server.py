"""A small in-memory server that speaks the Hugging Face Hub's HTTP protocol, for tests.

Test infrastructure, not a product (DESIGN.md §4, "Testing"): the real Hub is unreachable from our machines, so the
tests drive the real ``huggingface_hub`` client (``HfApi``, ``hf_hub_download``, ``snapshot_download``, peft's and
transformers' ``push_to_hub`` / ``from_pretrained``) against this server on 127.0.0.1. Standard library only (plus
PyYAML, already a dependency of ``huggingface_hub``'s model cards, to read README.md metadata).

    hub = HubServer(tokens={"hf_w": ("alice", "write")}, orgs={"peftlab-org": ["alice"]}).start()
    HfApi(endpoint=hub.url, token="hf_w").create_repo("alice/x")
    hub.stop()

The pytest fixtures that start it and point ``huggingface_hub`` at it live in ``tests/hub_fixture.py``. Checked
against ``huggingface_hub`` 2.4 (``utils/_http.py``: ``hf_raise_for_status``; ``_commit_api.py``; ``hf_api.py``;
``file_download.py``); run the client with ``HF_HUB_DISABLE_XET=1`` (the server has no Xet/LFS storage).

Model
    Repos live in memory, keyed by (type, "namespace/name"). Each has a real commit history: every commit has a
    git-compatible 40-hex sha (blob, tree and commit objects are hashed exactly as git does), its parents, title,
    message, author, date, and a full snapshot {path: bytes}. Branches and tags map a name to a commit sha; "main"
    is created with the repo, at an initial commit holding ``.gitattributes`` (like the Hub). Pull-request refs
    (``refs/pr/N``) come from commits with ``create_pr=1``. A repo has an owner namespace, a private flag, and
    download/like counters (``downloads`` counts GETs of ``config.json`` / ``adapter_config.json``, roughly the Hub's
    rule; ``set_stats`` sets both for sort tests).

Auth
    The server is built with ``tokens`` {token: (user, role)}, role "read" or "write", and ``orgs`` {org: [users]}.
    ``Authorization: Bearer <unknown token>`` → 401 "Invalid credentials in Authorization header" on any route.
    Writes need a token (401 without), with role "write" (403 otherwise), whose user is the repo's namespace or a
    member of that org (403 otherwise). A private repo is readable only by such users; to anyone else it does not
    exist: 401 without a token, 404 with one, both with ``X-Error-Code: RepoNotFound`` — what the Hub does, and what
    the client turns into ``RepositoryNotFoundError``.

Errors
    JSON body ``{"error": message}`` plus ``X-Error-Message``, and ``X-Error-Code`` where the Hub sends one:
    ``RepoNotFound`` (401/404), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit``, so the
    client caches the miss). Also 400 (bad request), 403 (no rights), 409 (repo/branch/tag exists, JSON still has
    ``url`` on repo create), 412 (stale ``parentCommit``).

Endpoints ({type} is model, dataset or space; {repo} is "namespace/name"; {rev} is a branch, tag, ``refs/...`` or a
full or abbreviated commit sha, URL-quoted as the client sends it)
    GET    /api/whoami-v2                               name, orgs, auth.accessToken.role
    POST   /api/repos/create                            name, organization, type, private|visibility, sdk; 409 exists
    DELETE /api/repos/delete                            name, organization, type
    PUT    /api/{type}s/{repo}/settings                 private|visibility, gated
    POST   /api/validate-yaml                           README.md metadata; 400 with ``errors`` on bad YAML
    GET    /api/{type}s                                 list_models/datasets/spaces: filter (all must be tags),
                                                        author, search, library, pipeline_tag, sort (+direction),
                                                        limit, full, cardData, expand
    GET    /api/{type}s/{repo}[/revision/{rev}]         repo_info: id, sha, siblings (size/blobId with blobs=1),
                                                        cardData, tags, private, lastModified, createdAt, author,
                                                        downloads, likes, library_name, pipeline_tag, gated
    GET    /api/{type}s/{repo}/tree/{rev}[/{path}]      list_repo_tree (recursive, expand → lastCommit)
    POST   /api/{type}s/{repo}/paths-info/{rev}         get_paths_info (form: paths, expand)
    GET    /api/{type}s/{repo}/refs                     branches, tags, converts, pullRequests (include_prs=1)
    GET    /api/{type}s/{repo}/commits/{rev}            list_repo_commits (first-parent history, newest first)
    POST   /api/{type}s/{repo}/preupload/{rev}          uploadMode "regular" for every file, oid of the current blob
    POST   /api/{type}s/{repo}/commit/{rev}             NDJSON: header (summary, description, parentCommit),
                                                        file (base64 or utf-8 content), deletedFile, deletedFolder,
                                                        lfsFile (only for content already on the server, by sha256);
                                                        create_pr=1
    POST   /api/{type}s/{repo}/branch/{branch}          startingPoint, emptyBranch; 409 exists
    DELETE /api/{type}s/{repo}/branch/{branch}
    POST   /api/{type}s/{repo}/tag/{rev}                tag, message; 409 exists
    DELETE /api/{type}s/{repo}/tag/{tag}
    HEAD|GET /{repo}/resolve/{rev}/{path}               and /datasets/..., /spaces/...: X-Repo-Commit, ETag (git
                                                        blob sha1), Content-Length; Range on GET

Card-derived metadata (recomputed on every commit from the README.md YAML header)
    cardData is the YAML mapping. Tags: the card's ``tags``, the library name, ``pipeline_tag``, each ``language``,
    ``dataset:<x>`` per ``datasets``, ``license:<x>``, and per ``base_model`` entry ``base_model:<id>`` and
    ``base_model:<relation>:<id>``, where relation is the card's ``base_model_relation``, else "adapter" when the
    library is peft (or an ``adapter_config.json`` is present), "merge" for several bases, "finetune" otherwise; plus
    "safetensors" when a ``.safetensors`` file is present. ``library_name`` is the card's, else "peft" when
    ``adapter_config.json`` exists, else "transformers" when ``config.json`` exists.

Not implemented
    Git LFS / Xet storage and the LFS batch API (``preupload`` never answers "lfs", files are always sent inline, so
    large uploads are slow), ``.gitignore`` handling in preupload (``shouldIgnore`` is always false), the git
    smart-HTTP protocol (no ``git clone``), discussions and PR comments (only the ``refs/pr/N`` refs), likes, gated
    access requests, collections, Spaces runtime, Inference, webhooks, jobs, buckets, ``super_squash_history``,
    ``move_repo``, pagination (every list comes in one page), repo ids without a namespace, rate limits, redirects
    and CDN URLs, the Hub's full metadata validation (``validate-yaml`` only checks that the YAML parses to a
    mapping) and most of its derived fields (safetensors parameter counts, ``transformersInfo``, ``config``, ...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# test identities (what the `hub` fixture of tests/hub_fixture.py starts the server with)
USER, ORG, OTHER_USER = "alice", "peftlab-org", "bob"
WRITE_TOKEN, READ_TOKEN, OTHER_TOKEN = "hf_alice_write", "hf_alice_read", "hf_bob_write"
TOKENS = {WRITE_TOKEN: (USER, "write"), READ_TOKEN: (USER, "read"), OTHER_TOKEN: (OTHER_USER, "write")}
ORGS = {ORG: [USER]}

REPO_TYPES = ("model", "dataset", "space")
GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
_SHA = re.compile(r"[0-9a-f]{7,40}")


# --- git objects ------------------------------------------------------------------------------------------------------


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git_tree_sha(files: dict[str, bytes], prefix: str = "") -> str:
    """The git tree sha of the folder ``prefix`` ("" for the root) of a {path: bytes} snapshot."""
    children: dict[str, tuple[bytes, str]] = {}  # name -> (mode, sha)
    for path, data in files.items():
        if not path.startswith(prefix):
            continue
        name, _, rest = path[len(prefix) :].partition("/")
        if rest:
            if name not in children:
                children[name] = (b"40000", _git_tree_sha(files, f"{prefix}{name}/"))
        else:
            children[name] = (b"100644", git_blob_sha(data))
    body = b"".join(
        mode + b" " + name.encode() + b"\0" + bytes.fromhex(sha)
        for name, (mode, sha) in sorted(children.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == b"40000" else ""))
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_card(readme: bytes | None) -> dict | None:
    """The YAML metadata header of a README.md as a dict (None when absent); raises ValueError when malformed."""
    if readme is None:
        return None
    text = readme.decode("utf-8", errors="replace")
    match = _YAML_BLOCK.search(text)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML in README.md metadata: {e}") from e
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data


def _as_list(value) -> list:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if v is not None]


# --- state ------------------------------------------------------------------------------------------------------------


@dataclass
class Commit:
    sha: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: datetime
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    sdk: str | None = None
    gated: bool | str = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, rev: str) -> str | None:
        """The commit sha a revision (branch, tag, refs/..., full or abbreviated sha) points to, or None."""
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev.startswith("refs/heads/"):
            return self.branches.get(rev[len("refs/heads/") :])
        if rev.startswith("refs/tags/"):
            return self.tags.get(rev[len("refs/tags/") :])
        if m := re.fullmatch(r"refs/pr/(\d+)", rev):
            return self.pull_requests.get(int(m.group(1)))
        if _SHA.fullmatch(rev):
            found = [sha for sha in self.commits if sha.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None

    def add_commit(self, parent: str | None, files: dict[str, bytes], title: str, message: str, author: str) -> Commit:
        date = _now()
        stamp = f"{author} <{author}@users.noreply.huggingface.co> {int(date.timestamp())} +0000"
        text = f"tree {_git_tree_sha(files)}\n" + (f"parent {parent}\n" if parent else "")
        text += f"author {stamp}\ncommitter {stamp}\n\n{title}\n" + (f"\n{message}\n" if message else "")
        raw = text.encode()
        sha = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        commit = Commit(sha, [parent] if parent else [], title, message, author, date, dict(files))
        self.commits[sha] = commit
        return commit

    def history(self, sha: str) -> list[Commit]:
        out = []
        while sha:
            commit = self.commits[sha]
            out.append(commit)
            sha = commit.parents[0] if commit.parents else None
        return out

    def last_commit_touching(self, sha: str, path: str) -> Commit:
        """The newest commit (first-parent history from ``sha``) that changed ``path`` (a file or a folder)."""
        history = self.history(sha)

        def view(commit: Commit) -> dict:
            return {p: d for p, d in commit.files.items() if p == path or p.startswith(path.rstrip("/") + "/")}

        for commit, older in zip(history, history[1:] + [None]):
            if older is None or view(commit) != view(older):
                return commit
        return history[-1]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


@dataclass
class Request:
    method: str
    parts: list[str]  # raw (still quoted) path segments
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    user: str | None
    role: str | None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> dict:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubError(400, f"invalid JSON body: {e}") from e
        if not isinstance(data, dict):
            raise HubError(400, "JSON body must be an object")
        return data


# --- server -----------------------------------------------------------------------------------------------------------


class HubServer:
    """An in-memory Hugging Face Hub on 127.0.0.1 (see the module docstring for what it speaks)."""

    def __init__(self, tokens: dict[str, tuple[str, str]] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens: dict[str, tuple[str, str]] = dict(tokens or {})
        self.orgs: dict[str, list[str]] = {org: list(members) for org, members in (orgs or {}).items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), newest last, for debugging
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # helpers for tests
    def add_token(self, token: str, user: str, role: str = "write") -> str:
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        with self.lock:
            self.tokens[token] = (user, role)
        return token

    def add_org(self, org: str, members: list[str]) -> None:
        with self.lock:
            self.orgs[org] = list(members)

    def reset(self) -> None:
        """Forget every repo (tokens and orgs stay)."""
        with self.lock:
            self.repos.clear()
            self.requests.clear()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | str] | None = None,
        *,
        repo_type: str = "model",
        private: bool = False,
        message: str = "Upload files",
    ) -> str:
        """Create a repo directly (no HTTP, no auth), optionally with one commit of ``files``; returns main's sha."""
        with self.lock:
            author = self._owner_user(repo_id.split("/")[0])
            repo = self._create(repo_type, repo_id, private, author)
            if files:
                head = repo.branches["main"]
                snapshot = dict(repo.commits[head].files)
                snapshot.update({p: d.encode() if isinstance(d, str) else bytes(d) for p, d in files.items()})
                repo.branches["main"] = repo.add_commit(head, snapshot, message, "", author).sha
            return repo.branches["main"]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The {path: bytes} snapshot of a revision."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            return dict(repo.commits[sha].files)

    def set_stats(self, repo_id: str, *, downloads: int | None = None, likes: int | None = None, repo_type="model"):
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            repo.downloads = repo.downloads if downloads is None else downloads
            repo.likes = repo.likes if likes is None else likes

    # internals
    def _owner_user(self, namespace: str) -> str:
        members = self.orgs.get(namespace)
        return members[0] if members else namespace

    def _create(self, repo_type: str, repo_id: str, private: bool, author: str, sdk: str | None = None) -> Repo:
        repo = Repo(repo_type, repo_id, private, _now(), sdk=sdk)
        files = {".gitattributes": GITATTRIBUTES}
        if repo_type == "space":
            files["README.md"] = f"---\ntitle: {repo_id.split('/')[1]}\nsdk: {sdk}\n---\n".encode()
        repo.branches["main"] = repo.add_commit(None, files, "initial commit", "", author).sha
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def repo_url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}"


def card_metadata(repo: Repo, files: dict[str, bytes]) -> tuple[dict | None, list[str], str | None]:
    """(cardData, tags, library_name) of a snapshot, derived as the Hub does (see the module docstring)."""
    try:
        card = parse_card(files.get("README.md"))
    except ValueError:
        card = None
    card = card or {}
    library = card.get("library_name")
    if library is None and repo.repo_type == "model":
        library = "peft" if "adapter_config.json" in files else "transformers" if "config.json" in files else None
    tags: list[str] = []

    def add(tag) -> None:
        if tag is not None and str(tag) and str(tag) not in tags:
            tags.append(str(tag))

    for tag in _as_list(card.get("tags")):
        add(tag)
    add(library)
    add(card.get("pipeline_tag"))
    if repo.repo_type == "model" and any(p.endswith(".safetensors") for p in files):
        add("safetensors")
    for lang in _as_list(card.get("language")):
        add(lang)
    for ds in _as_list(card.get("datasets")):
        add(f"dataset:{ds}")
    for lic in _as_list(card.get("license")):
        add(f"license:{lic}")
    bases = _as_list(card.get("base_model"))
    relation = card.get("base_model_relation")
    if relation is None:
        relation = (
            "adapter"
            if library == "peft" or "adapter_config.json" in files
            else "merge"
            if len(bases) > 1
            else "finetune"
        )
    for base in bases:
        add(f"base_model:{base}")
        add(f"base_model:{relation}:{base}")
    return (card or None), tags, library


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer  # set by HubServer.start

    def log_message(self, format, *args):  # noqa: A002 - quiet; requests are recorded in HubServer.requests
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        hub = self.server_hub
        status = 500
        try:
            body = self._read_body()
            split = urlsplit(self.path)
            parts = [p for p in split.path.split("/") if p != ""]
            request = Request(
                method,
                parts,
                parse_qs(split.query, keep_blank_values=True),
                {k.lower(): v for k, v in self.headers.items()},
                body,
                None,
                None,
            )
            auth = self.headers.get("Authorization")
            if auth:
                token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
                if token not in hub.tokens:
                    raise HubError(401, INVALID_CREDENTIALS)
                request.user, request.role = hub.tokens[token]
            with hub.lock:
                status, headers, payload = _route(hub, request)
        except HubError as e:
            status = e.status
            headers = {"X-Error-Message": e.message.splitlines()[0].encode("ascii", "replace").decode()}
            if e.code:
                headers["X-Error-Code"] = e.code
            headers.update(e.headers)
            payload = e.body if e.body is not None else {"error": e.message}
        except Exception as e:  # a bug in this server: say so rather than hang the client
            message = f"hub server error: {e!r}".encode("ascii", "replace").decode().splitlines()[0]
            status, headers, payload = 500, {"X-Error-Message": message}, {"error": repr(e)}
        hub.requests.append((method, self.path, status))
        self._send(method, status, headers, payload)

    def _send(self, method: str, status: int, headers: dict, payload) -> None:
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        headers = {"Content-Type": content_type, **headers}
        headers.setdefault("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)


# --- routes -----------------------------------------------------------------------------------------------------------


def _route(hub: HubServer, req: Request):
    p = req.parts
    if p[:1] == ["api"]:
        if p == ["api", "whoami-v2"] and req.method == "GET":
            return _whoami(hub, req)
        if p == ["api", "repos", "create"] and req.method == "POST":
            return _create_repo(hub, req)
        if p == ["api", "repos", "delete"] and req.method == "DELETE":
            return _delete_repo(hub, req)
        if p == ["api", "validate-yaml"] and req.method == "POST":
            return _validate_yaml(req)
        if len(p) == 2 and p[1] in ("models", "datasets", "spaces") and req.method == "GET":
            return _list_repos(hub, req, p[1][:-1])
        if len(p) >= 4 and p[1] in ("models", "datasets", "spaces"):
            repo_type, repo_id = p[1][:-1], f"{unquote(p[2])}/{unquote(p[3])}"
            return _repo_api(hub, req, repo_type, repo_id, p[4:])
    else:
        repo_type = "model"
        if len(p) >= 4 and p[0] in ("datasets", "spaces", "models") and p[3] == "resolve":
            repo_type, p = p[0][:-1], p[1:]
        if len(p) >= 5 and p[2] == "resolve":
            rev, path_parts = _split_rev(p[3:])
            return _resolve(hub, req, repo_type, f"{unquote(p[0])}/{unquote(p[1])}", rev, path_parts)
    raise HubError(404, f"no route for {req.method} /{'/'.join(req.parts)}")


def _split_rev(parts: list[str]) -> tuple[str, list[str]]:
    """Split raw segments into (revision, rest): the client quotes the revision ('refs%2Fpr%2F1'), or not."""
    if parts and parts[0] == "refs" and len(parts) >= 3:
        n = 3 if parts[1] in ("pr", "heads", "tags", "convert") else 2
        return unquote("/".join(parts[:n])), parts[n:]
    return unquote(parts[0]), parts[1:]


def _join(parts: list[str]) -> str:
    return "/".join(unquote(part) for part in parts)


def _whoami(hub: HubServer, req: Request):
    if req.user is None:
        raise HubError(401, "Invalid username or password.")
    orgs = [
        {"type": "org", "name": org, "fullname": org, "roleInOrg": "admin" if members[:1] == [req.user] else "write"}
        for org, members in sorted(hub.orgs.items())
        if req.user in members
    ]
    return (
        200,
        {},
        {
            "type": "user",
            "id": hashlib.sha1(req.user.encode()).hexdigest()[:24],
            "name": req.user,
            "fullname": req.user,
            "email": f"{req.user}@example.com",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "avatarUrl": "",
            "orgs": orgs,
            "auth": {
                "type": "access_token",
                "accessToken": {
                    "displayName": f"{req.user}-{req.role}",
                    "role": req.role,
                    "createdAt": "2024-01-01T00:00:00.000Z",
                },
            },
        },
    )


def _require_write(hub: HubServer, req: Request, namespace: str, what: str) -> None:
    if req.user is None:
        raise HubError(401, "You must be authenticated to access this resource (a write token is required).")
    if req.role != "write":
        raise HubError(403, f"You don't have the rights to {what}: your token is read-only.")
    if not hub._can_write(req.user, namespace):
        raise HubError(403, f'You don\'t have the rights to {what} under the namespace "{namespace}".')


def _repo_type_from(data: dict) -> str:
    repo_type = data.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubError(400, f"invalid repo type {repo_type!r}")
    return repo_type


def _create_repo(hub: HubServer, req: Request):
    data = req.json()
    repo_type = _repo_type_from(data)
    name = data.get("name")
    if not name or not re.fullmatch(r"[\w.-]{1,96}", name) or "--" in name or ".." in name:
        raise HubError(400, f"invalid repo name {name!r}")
    namespace = data.get("organization") or req.user
    if namespace is None:
        raise HubError(401, "You must be authenticated to create a repo.")
    _require_write(hub, req, namespace, f"create a {repo_type}")
    repo_id = f"{namespace}/{name}"
    existing = hub.repos.get((repo_type, repo_id))
    if existing is not None:
        raise HubError(
            409,
            f"You already created this {repo_type} repo",
            body={"error": f"You already created this {repo_type} repo", "url": hub.repo_url(existing)},
        )
    if repo_type == "space" and not data.get("sdk"):
        raise HubError(400, "sdk is required for a Space")
    visibility = data.get("visibility")
    private = bool(data.get("private")) if visibility is None else visibility != "public"
    repo = hub._create(repo_type, repo_id, private, req.user, data.get("sdk"))
    return 200, {}, {"url": hub.repo_url(repo), "name": repo_id, "id": repo_id}


def _delete_repo(hub: HubServer, req: Request):
    data = req.json()
    repo_type = _repo_type_from(data)
    if req.user is None:
        raise HubError(401, "You must be authenticated to delete a repo.")
    namespace = data.get("organization") or req.user
    repo = _get_repo(hub, req, repo_type, f"{namespace}/{data.get('name')}")
    _require_write(hub, req, repo.namespace, "delete this repo")
    del hub.repos[(repo_type, repo.repo_id)]
    return 200, {}, {}


def _validate_yaml(req: Request):
    data = req.json()
    try:
        parse_card((data.get("content") or "").encode())
    except ValueError as e:
        raise HubError(400, str(e), body={"errors": [{"message": str(e)}], "warnings": []}) from e
    return 200, {}, {"errors": [], "warnings": []}


def _get_repo(hub: HubServer, req: Request, repo_type: str, repo_id: str) -> Repo:
    repo = hub.repos.get((repo_type, repo_id))
    if repo is None or (repo.private and not hub._can_write(req.user, repo.namespace)):
        # like the Hub: a private repo you cannot read does not exist; 401 when anonymous, 404 otherwise
        raise HubError(401 if req.user is None else 404, "Repository not found", "RepoNotFound")
    return repo


def _rev(repo: Repo, rev: str) -> str:
    sha = repo.resolve(rev)
    if sha is None:
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return sha


def _repo_api(hub: HubServer, req: Request, repo_type: str, repo_id: str, rest: list[str]):
    repo = _get_repo(hub, req, repo_type, repo_id)
    action = rest[0] if rest else ""
    m = req.method
    if m == "GET" and action == "":
        return _info(hub, req, repo, "main")
    if m == "GET" and action == "revision" and len(rest) >= 2:
        return _info(hub, req, repo, _split_rev(rest[1:])[0])
    if m == "GET" and action == "tree" and len(rest) >= 2:
        rev, path_parts = _split_rev(rest[1:])
        return _tree(req, repo, rev, _join(path_parts))
    if m == "POST" and action == "paths-info" and len(rest) >= 2:
        return _paths_info(req, repo, _split_rev(rest[1:])[0])
    if m == "GET" and action == "refs":
        return _refs(req, repo)
    if m == "GET" and action == "commits" and len(rest) >= 2:
        return _commits(repo, _split_rev(rest[1:])[0])
    if m == "POST" and action == "preupload" and len(rest) >= 2:
        _require_write(hub, req, repo.namespace, "upload to this repo")
        return _preupload(req, repo, _split_rev(rest[1:])[0])
    if m == "POST" and action == "commit" and len(rest) >= 2:
        _require_write(hub, req, repo.namespace, "commit to this repo")
        return _commit(hub, req, repo, _split_rev(rest[1:])[0])
    if action == "branch" and len(rest) >= 2 and m in ("POST", "DELETE"):
        _require_write(hub, req, repo.namespace, "manage branches of this repo")
        return _branch(req, repo, _join(rest[1:]))
    if action == "tag" and len(rest) >= 2 and m in ("POST", "DELETE"):
        _require_write(hub, req, repo.namespace, "manage tags of this repo")
        return _tag(req, repo, _join(rest[1:]))
    if m == "PUT" and action == "settings":
        _require_write(hub, req, repo.namespace, "change the settings of this repo")
        data = req.json()
        if "visibility" in data or "private" in data:
            visibility = data.get("visibility")
            repo.private = bool(data.get("private")) if visibility is None else visibility != "public"
        if "gated" in data:
            repo.gated = data["gated"]
        return 200, {}, {}
    raise HubError(404, f"no route for {m} {'/'.join(rest)} on {repo_id}")


def _repo_json(hub: HubServer, repo: Repo, sha: str, *, siblings: bool, card: bool, blobs: bool = False) -> dict:
    commit = repo.commits[sha]
    card_data, tags, library = card_metadata(repo, commit.files)
    out = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": sha,
        "lastModified": _iso(commit.date),
        "createdAt": _iso(repo.created_at),
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": tags,
    }
    if repo.repo_type == "model":
        out.update(modelId=repo.repo_id, library_name=library, pipeline_tag=(card_data or {}).get("pipeline_tag"))
    if repo.repo_type == "space":
        out.update(sdk=repo.sdk, subdomain=repo.repo_id.replace("/", "-").lower())
    if card and card_data is not None:
        out["cardData"] = card_data
    if siblings:
        out["siblings"] = [
            {"rfilename": path, **({"size": len(data), "blobId": git_blob_sha(data)} if blobs else {})}
            for path, data in sorted(commit.files.items())
        ]
        if blobs:
            out["usedStorage"] = sum(len(d) for d in commit.files.values())
    return out


def _info(hub: HubServer, req: Request, repo: Repo, rev: str):
    sha = _rev(repo, rev)
    out = _repo_json(hub, repo, sha, siblings=True, card=True, blobs=req.flag("blobs"))
    expand = [e for key in ("expand", "expand[]") for e in req.query.get(key, [])]
    if expand:  # only the asked-for properties, like the Hub
        out = {k: v for k, v in out.items() if k in (*expand, "_id", "id")}
    return 200, {}, out


def _file_entry(repo: Repo, sha: str, path: str, data: bytes, expand: bool) -> dict:
    entry = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
    if expand:
        entry["lastCommit"] = _last_commit(repo, sha, path)
    return entry


def _folder_entry(repo: Repo, sha: str, path: str, expand: bool) -> dict:
    entry = {"type": "directory", "oid": _git_tree_sha(repo.commits[sha].files, path + "/"), "size": 0, "path": path}
    if expand:
        entry["lastCommit"] = _last_commit(repo, sha, path)
    return entry


def _last_commit(repo: Repo, sha: str, path: str) -> dict:
    commit = repo.last_commit_touching(sha, path)
    return {"id": commit.sha, "title": commit.title, "date": _iso(commit.date)}


def _tree(req: Request, repo: Repo, rev: str, path: str):
    sha = _rev(repo, rev)
    files = repo.commits[sha].files
    path = path.strip("/")
    prefix = f"{path}/" if path else ""
    if path and not any(p.startswith(prefix) for p in files):
        raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": sha})
    recursive, expand = req.flag("recursive"), req.flag("expand")
    entries: dict[str, dict] = {}
    for file_path, data in sorted(files.items()):
        if not file_path.startswith(prefix):
            continue
        rest = file_path[len(prefix) :].split("/")
        depth = len(rest) if recursive else 1
        for i in range(1, min(len(rest), depth + 1)):
            folder = prefix + "/".join(rest[:i])
            if folder not in entries:
                entries[folder] = _folder_entry(repo, sha, folder, expand)
        if len(rest) <= depth:
            entries[file_path] = _file_entry(repo, sha, file_path, data, expand)
    if recursive:
        return 200, {}, sorted(entries.values(), key=lambda e: e["path"])
    # one level: the Hub lists folders first
    return 200, {}, sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))


def _paths_info(req: Request, repo: Repo, rev: str):
    sha = _rev(repo, rev)
    files = repo.commits[sha].files
    content_type = req.headers.get("content-type", "")
    if "json" in content_type:
        data = req.json()
        paths, expand = _as_list(data.get("paths")), bool(data.get("expand"))
    else:
        form = parse_qs(req.body.decode(), keep_blank_values=True)
        paths, expand = form.get("paths", []), (form.get("expand", [""])[-1].lower() in ("1", "true"))
    out = []
    for path in paths:
        path = path.strip("/")
        if path in files:
            out.append(_file_entry(repo, sha, path, files[path], expand))
        elif path and any(p.startswith(path + "/") for p in files):
            out.append(_folder_entry(repo, sha, path, expand))
    return 200, {}, out


def _refs(req: Request, repo: Repo):
    def ref(name: str, full: str, sha: str) -> dict:
        return {"name": name, "ref": full, "targetCommit": sha}

    out = {
        "branches": [ref(n, f"refs/heads/{n}", s) for n, s in sorted(repo.branches.items())],
        "converts": [],
        "tags": [ref(n, f"refs/tags/{n}", s) for n, s in sorted(repo.tags.items())],
    }
    if req.flag("include_prs"):
        out["pullRequests"] = [ref(f"refs/pr/{n}", f"refs/pr/{n}", s) for n, s in sorted(repo.pull_requests.items())]
    return 200, {}, out


def _commits(repo: Repo, rev: str):
    sha = _rev(repo, rev)
    return (
        200,
        {},
        [
            {
                "id": c.sha,
                "authors": [{"user": c.author, "avatar": ""}],
                "date": _iso(c.date),
                "title": c.title,
                "message": c.message,
                "formatted": {"title": c.title, "message": c.message},
            }
            for c in repo.history(sha)
        ],
    )


def _preupload(req: Request, repo: Repo, rev: str):
    pr = req.flag("create_pr")
    sha = _rev(repo, "main" if pr else rev)
    files = repo.commits[sha].files
    out = []
    for item in _as_list(req.json().get("files")):
        path = item.get("path")
        entry = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
        if path in files:
            entry["oid"] = git_blob_sha(files[path])
        out.append(entry)
    return 200, {}, {"files": out, "commitOid": sha}


def _branch_head(repo: Repo, rev: str) -> tuple[str, int | None]:
    """(branch name, pr number) of a revision that can be committed to."""
    if m := re.fullmatch(r"refs/pr/(\d+)", rev):
        if int(m.group(1)) in repo.pull_requests:
            return rev, int(m.group(1))
    name = rev[len("refs/heads/") :] if rev.startswith("refs/heads/") else rev
    if name in repo.branches:
        return name, None
    raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")


def _commit(hub: HubServer, req: Request, repo: Repo, rev: str):
    lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "the first NDJSON line must be the header")
    header = lines[0].get("value") or {}
    pr = req.flag("create_pr")
    branch, pr_num = _branch_head(repo, "main" if pr else rev)
    head = repo.pull_requests[pr_num] if pr_num is not None else repo.branches[branch]
    parent = header.get("parentCommit")
    if parent and parent != head:
        raise HubError(412, "A commit has happened since. Please refresh and try again.")
    files = dict(repo.commits[head].files)
    for line in lines[1:]:
        key, value = line.get("key"), line.get("value") or {}
        path = (value.get("path") or "").strip("/")
        if key == "file":
            content = value.get("content") or ""
            files[path] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        elif key == "lfsFile":
            known = (d for c in repo.commits.values() for d in c.files.values())
            data = next((d for d in known if hashlib.sha256(d).hexdigest() == value.get("oid")), None)
            if data is None:
                raise HubError(
                    400, f"LFS object {value.get('oid')} for {path} was never uploaded (no LFS storage here)"
                )
            files[path] = data
        elif key == "deletedFile":
            if path not in files:
                raise HubError(
                    404, f"A file with this name doesn't exist: {path}", "EntryNotFound", {"X-Repo-Commit": head}
                )
            del files[path]
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound", {"X-Repo-Commit": head}
                )
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")
    if "README.md" in files:
        try:
            parse_card(files["README.md"])
        except ValueError as e:
            raise HubError(400, str(e)) from e
    commit = repo.add_commit(head, files, header.get("summary") or "Update", header.get("description") or "", req.user)
    out = {
        "success": True,
        "commitOid": commit.sha,
        "commitUrl": f"{hub.repo_url(repo)}/commit/{commit.sha}",
        "hookOutput": "",
    }
    if pr:
        number = max(repo.pull_requests, default=0) + 1
        repo.pull_requests[number] = commit.sha
        out["pullRequestUrl"] = f"{hub.repo_url(repo)}/discussions/{number}"
    elif pr_num is not None:
        repo.pull_requests[pr_num] = commit.sha
    else:
        repo.branches[branch] = commit.sha
    return 200, {}, out


def _branch(req: Request, repo: Repo, name: str):
    if req.method == "DELETE":
        if name not in repo.branches:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        if name == "main":
            raise HubError(403, "You cannot delete the default branch")
        del repo.branches[name]
        return 200, {}, {}
    data = req.json()
    if not name or name.startswith("refs/") or not re.fullmatch(r"[\w./-]+", name) or ".." in name:
        raise HubError(400, f"invalid branch name {name!r}")
    if name in repo.branches and not data.get("overwrite"):
        raise HubError(409, f"Reference refs/heads/{name} already exists")
    if data.get("emptyBranch"):
        repo.branches[name] = repo.add_commit(None, {}, "empty branch", "", req.user).sha
    else:
        repo.branches[name] = _rev(repo, data.get("startingPoint") or "main")
    return 200, {}, {}


def _tag(req: Request, repo: Repo, target: str):
    if req.method == "DELETE":
        if target not in repo.tags:
            raise HubError(404, f"Invalid rev id: {target}", "RevisionNotFound")
        del repo.tags[target]
        return 200, {}, {}
    sha = _rev(repo, target)
    tag = req.json().get("tag")
    if not tag or not re.fullmatch(r"[\w./-]+", tag) or ".." in tag:
        raise HubError(400, f"invalid tag name {tag!r}")
    if tag in repo.tags:
        raise HubError(409, f"Tag {tag} already exists")
    repo.tags[tag] = sha
    return 200, {}, {}


def _resolve(hub: HubServer, req: Request, repo_type: str, repo_id: str, rev: str, path_parts: list[str]):
    if req.method not in ("GET", "HEAD"):
        raise HubError(405, "resolve is GET/HEAD only")
    repo = _get_repo(hub, req, repo_type, repo_id)
    sha = _rev(repo, rev)
    path = _join(path_parts)
    data = repo.commits[sha].files.get(path)
    if data is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
    headers = {
        "X-Repo-Commit": sha,
        "ETag": f'"{git_blob_sha(data)}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
    }
    status = 200
    if req.method == "GET":
        if path.rsplit("/", 1)[-1] in ("config.json", "adapter_config.json"):
            repo.downloads += 1
        rng = req.headers.get("range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start = int(m.group(1)) if m.group(1) else max(len(data) - int(m.group(2) or 0), 0)
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            if start >= len(data):
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start : end + 1], 206
    headers["Content-Length"] = str(len(data))
    return status, headers, data


def _list_repos(hub: HubServer, req: Request, repo_type: str):
    filters = [f for value in req.query.get("filter", []) for f in value.split(",") if f]
    author, search = req.param("author"), (req.param("search") or "").lower()
    library, pipeline = req.param("library"), req.param("pipeline_tag")
    full, with_card = req.flag("full"), req.flag("cardData") or req.flag("full")
    expand = [e for key in ("expand", "expand[]") for e in req.query.get(key, [])]
    rows = []
    for (kind, repo_id), repo in hub.repos.items():
        if kind != repo_type or (repo.private and not hub._can_write(req.user, repo.namespace)):
            continue
        info = _repo_json(hub, repo, repo.branches["main"], siblings=full, card=with_card)
        if author and repo.namespace != author:
            continue
        if search and search not in repo_id.lower():
            continue
        if library and info.get("library_name") != library:
            continue
        if pipeline and info.get("pipeline_tag") != pipeline:
            continue
        if any(f not in info["tags"] and f != info.get("library_name") for f in filters):
            continue
        rows.append(info)
    sort = req.param("sort")
    if sort:
        key = {
            "last_modified": "lastModified",
            "created_at": "createdAt",
            "trending_score": "likes",
            "trendingScore": "likes",
        }.get(sort, sort)
        present = sorted((r for r in rows if r.get(key) is not None), key=lambda r: (r[key], r["id"]))
        if req.param("direction", "-1") != "1":  # descending unless asked otherwise, like the Hub
            present.reverse()
        rows = present + [r for r in rows if r.get(key) is None]
    else:
        rows.sort(key=lambda r: r["id"])
    limit = req.param("limit")
    if limit:
        rows = rows[: int(limit)]
    if expand:
        rows = [{k: v for k, v in r.items() if k in (*expand, "_id", "id")} for r in rows]
    elif not full:
        for r in rows:
            for key in ("sha", "lastModified", "author", "gated", "disabled"):
                r.pop(key, None)
    return 200, {}, rows
