"""`sambay pull` and `resolve_model_dir` against a fake Hugging Face Hub on 127.0.0.1 (no internet).

The fake Hub answers the calls huggingface_hub makes: `GET /api/models/{repo}[/revision/{rev}]` (model info with
file sizes and LFS sha256), `GET /api/models/{repo}/tree/{rev}`, and `HEAD`/`GET /{repo}/resolve/{rev}/{file}` with
X-Repo-Commit, ETag and Range support, and the Hub's error headers (X-Error-Code RepoNotFound / GatedRepo /
RevisionNotFound / EntryNotFound).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from sambay_cli import pull as pull_module
from sambay_cli.errors import SambaYError
from sambay_cli.pull import check_safetensors_header, pull, resolve_model_dir, select_model_files

FIXTURES = Path(__file__).parent / "fixtures"
TINY_MODEL = FIXTURES / "phi4flash-tiny-a"
TINY_TOKENIZER = FIXTURES / "tokenizer-tiny"
REPO_ROOT = Path(__file__).resolve().parents[1]
GOOD_TOKEN = "hf_good_token"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------------------------------- fixture repos
def _split_safetensors(data: bytes, n_shards: int) -> list[bytes]:
    """Split a safetensors file into shards at tensor boundaries (raw bytes, no torch)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    body = data[8 + header_len :]
    names = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    shards = []
    for k in range(n_shards):
        part = names[k::n_shards]
        new_header, chunks, offset = {}, [], 0
        for name in part:
            start, end = header[name]["data_offsets"]
            chunks.append(body[start:end])
            new_header[name] = {**header[name], "data_offsets": [offset, offset + end - start]}
            offset += end - start
        raw = json.dumps(new_header).encode()
        raw += b" " * (-len(raw) % 8)
        shards.append(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))
    return shards


def _tensor_names(shard: bytes) -> list[str]:
    (n,) = struct.unpack("<Q", shard[:8])
    return [k for k in json.loads(shard[8 : 8 + n]) if k != "__metadata__"]


def tiny_repo_files() -> dict[str, bytes]:
    files = {name: (TINY_MODEL / name).read_bytes() for name in ("config.json", "model.safetensors")}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        files[name] = (TINY_TOKENIZER / name).read_bytes()
    files["README.md"] = b"# tiny test repo\n"
    files["modeling_phi4flash.py"] = b"# remote code stand-in\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    files["extras/notes.txt"] = b"not needed\n"
    return files


def sharded_repo_files() -> dict[str, bytes]:
    files = tiny_repo_files()
    shards = _split_safetensors(files.pop("model.safetensors"), 2)
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-00002.safetensors"
        files[name] = shard
        weight_map.update({t: name for t in _tensor_names(shard)})
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(len(s) for s in shards)}, "weight_map": weight_map}
    ).encode()
    return files


# --------------------------------------------------------------------------------------------------- fake Hub
@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = COMMIT
    gated: bool = False
    private: bool = False
    served_override: dict[str, bytes] = field(default_factory=dict)  # bytes sent instead of the advertised ones

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(".safetensors")


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.interrupt_once: set[str] = set()  # file names whose first GET stops half-way
        self.stall: set[str] = set()  # file names whose GET sends half then waits for `release`
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self, name: str) -> list[tuple[str, str, str | None]]:
        return [e for e in self.log if e[0] == "GET" and e[1].endswith("/" + name)]

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._dispatch(head=True)

            def do_GET(self) -> None:
                self._dispatch(head=False)

            # -- helpers
            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: str | None, head: bool, message: str | None = None) -> None:
                headers = {"Content-Type": "application/json", "X-Repo-Commit": COMMIT}
                if code:
                    headers["X-Error-Code"] = code
                if message:
                    headers["X-Error-Message"] = message
                self._send(status, json.dumps({"error": code or message or "error"}).encode(), headers, head)

            def _auth_problem(self, repo: FakeRepo, head: bool, *, files: bool) -> bool:
                auth = self.headers.get("Authorization")
                token_ok = auth == f"Bearer {GOOD_TOKEN}"
                if repo.private and not token_ok:
                    self._error(401, "RepoNotFound", head)
                    return True
                if repo.gated and files and not token_ok:
                    if auth:
                        self._error(403, "GatedRepo", head, "Access to this model is restricted")
                    else:
                        self._error(401, "GatedRepo", head, "Access to this model is restricted")
                    return True
                return False

            def _dispatch(self, head: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.log.append((self.command, path, self.headers.get("Range")))
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?", path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if api:
                    self._api(api.group(1), api.group(2), api.group(3) or "main", head)
                elif resolve:
                    self._resolve(resolve.group(1), resolve.group(2), resolve.group(3), head)
                else:
                    self._error(404, None, head, "no route")

            def _repo_and_revision(self, repo_id: str, revision: str, head: bool, files: bool) -> FakeRepo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", head)
                    return None
                if self._auth_problem(repo, head, files=files):
                    return None
                if revision not in ("main", repo.commit):
                    self._error(404, "RevisionNotFound", head)
                    return None
                return repo

            def _api(self, repo_id: str, kind: str | None, revision: str, head: bool) -> None:
                repo = self._repo_and_revision(repo_id, revision, head, files=False)
                if repo is None:
                    return
                entries = []
                for name, data in sorted(repo.files.items()):
                    lfs = {"size": len(data), "sha256": repo.sha256(name), "pointerSize": 134} if repo.is_lfs(name) else None
                    entries.append((name, data, lfs))
                if kind == "tree":
                    body = [
                        {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest(),
                         **({"lfs": {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": 134}} if lfs else {})}
                        for n, d, lfs in entries
                    ]  # fmt: skip
                else:
                    body = {
                        "id": repo_id,
                        "sha": repo.commit,
                        "private": repo.private,
                        "gated": "manual" if repo.gated else False,
                        "siblings": [
                            {"rfilename": n, "size": len(d), "blobId": hashlib.sha1(d).hexdigest(),
                             **({"lfs": lfs} if lfs else {})}
                            for n, d, lfs in entries
                        ],
                    }  # fmt: skip
                self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

            def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
                repo = self._repo_and_revision(repo_id, revision, head, files=True)
                if repo is None:
                    return
                if name not in repo.files:
                    self._error(404, "EntryNotFound", head)
                    return
                data = repo.served_override.get(name, repo.files[name])
                etag = repo.sha256(name) if repo.is_lfs(name) else hashlib.sha1(repo.files[name]).hexdigest()
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                range_header = self.headers.get("Range")
                status, start = 200, 0
                if range_header and not head:
                    match = re.fullmatch(r"bytes=(\d+)-", range_header)
                    assert match, range_header
                    start = int(match.group(1))
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if head:
                    self._send(200, data, headers, head=True)
                    return
                if name in hub.interrupt_once or name in hub.stall:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if name in hub.stall:
                        hub.stalled.set()
                        hub.release.wait(timeout=30)
                    hub.interrupt_once.discard(name)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(status, body, headers)

        return Handler

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as fake:
        fake.repos["test/tiny"] = FakeRepo(tiny_repo_files())
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        yield fake


def _pull(repo_id: str = "test/tiny", **kwargs):
    return pull(repo_id, show_progress=False, **kwargs)


NEEDED = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


# --------------------------------------------------------------------------------------------------- happy paths
def test_pull_into_cache_selects_model_files_and_verifies(hub: FakeHub, tmp_path: Path) -> None:
    result = _pull()
    path = Path(result.path)
    assert path == tmp_path / "hf_cache" / "models--test--tiny" / "snapshots" / COMMIT
    assert result.files == NEEDED and result.commit == COMMIT and result.revision == "main"
    for name in NEEDED:
        assert (path / name).read_bytes() == hub.repos["test/tiny"].files[name]
    assert not (path / "README.md").exists() and not (path / "modeling_phi4flash.py").exists()
    assert result.bytes == sum(len(hub.repos["test/tiny"].files[n]) for n in NEEDED) == result.downloaded_bytes
    assert (tmp_path / "hf_cache" / "models--test--tiny" / "refs" / "main").read_text() == COMMIT
    assert not hub.gets("README.md") and not hub.gets("notes.txt")
    # a second pull downloads nothing
    before = len([e for e in hub.log if e[0] == "GET" and "/resolve/" in e[1]])
    again = _pull()
    assert again.path == result.path and again.downloaded_bytes == 0
    assert len([e for e in hub.log if e[0] == "GET" and "/resolve/" in e[1]]) == before


def test_pull_follows_the_environment_not_the_librarys_import_time_flag(hub: FakeHub, monkeypatch) -> None:
    """huggingface_hub fixes HF_HUB_OFFLINE when first imported: if that happened while the variable was set, a later
    pull with the variable unset must still reach the Hub (and an offline pull must stay offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _pull().downloaded_bytes > 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _pull().downloaded_bytes == 0 and constants.HF_HUB_OFFLINE is True


def test_resolve_model_dir_uses_cache_only(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(SambaYError, match="sambay pull test/tiny"):
        resolve_model_dir("test/tiny")
    assert hub.log == []  # never touches the network
    path = Path(_pull().path)
    assert resolve_model_dir("test/tiny") == path
    assert resolve_model_dir(str(TINY_MODEL)) == TINY_MODEL
    with pytest.raises(SambaYError, match="not found"):
        resolve_model_dir(str(tmp_path / "nope"))
    with pytest.raises(SambaYError, match="not a model directory"):
        resolve_model_dir(str(TINY_MODEL / "config.json"))


def test_remote_code_and_include_flags(hub: FakeHub) -> None:
    result = _pull(include_remote_code=True, include=["README.md"])
    assert "modeling_phi4flash.py" in result.files and "README.md" in result.files
    assert (Path(result.path) / "modeling_phi4flash.py").is_file()


def test_sharded_repo_index_checked(hub: FakeHub) -> None:
    hub.repos["test/sharded"] = FakeRepo(sharded_repo_files())
    result = _pull("test/sharded")
    assert "model.safetensors.index.json" in result.files
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} <= set(result.files)


def test_index_naming_a_missing_tensor_is_an_error(hub: FakeHub) -> None:
    files = sharded_repo_files()
    index = json.loads(files["model.safetensors.index.json"])
    index["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors"
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    hub.repos["test/badindex"] = FakeRepo(files)
    with pytest.raises(SambaYError, match="ghost"):
        _pull("test/badindex")


def test_revision_and_local_dir(hub: FakeHub, tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    result = _pull(revision=COMMIT, local_dir=target)
    assert Path(result.path) == target.resolve() and result.revision == COMMIT
    assert sorted(p.name for p in target.iterdir() if p.is_file()) == NEEDED
    assert not any(p.name.endswith("sambay-partial") for p in target.parent.iterdir())
    assert not (tmp_path / "hf_cache" / "models--test--tiny").exists()
    # same pull again: nothing downloaded, nothing overwritten
    assert _pull(revision=COMMIT, local_dir=target).downloaded_bytes == 0
    # a foreign non-empty folder is not overwritten without --force
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(SambaYError, match="--force"):
        _pull(local_dir=other)
    assert (other / "mine.txt").read_text() == "keep"
    _pull(local_dir=other, force=True)
    assert not (other / "mine.txt").exists() and (other / "model.safetensors").is_file()


def test_offline_mode_resolves_from_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = _pull()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(hub.log)
    offline = _pull()
    assert offline.path == online.path and offline.offline and offline.files == NEEDED
    assert len(hub.log) == n_requests
    with pytest.raises(SambaYError, match="offline"):
        _pull("test/never-pulled")


# --------------------------------------------------------------------------------------------------- interruptions
def test_dropped_connection_resumes_with_range(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # huggingface_hub writes 10 MB chunks; shrink them so the 0.8 MB fixture gets a partial write before the drop
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.interrupt_once.add("model.safetensors")
    result = _pull()
    gets = hub.gets("model.safetensors")
    assert len(gets) == 2 and gets[0][2] is None
    size = len(hub.repos["test/tiny"].files["model.safetensors"])
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", gets[1][2] or "").group(1))
    assert 0 < resumed_at <= size // 2  # the second request resumed where the first stopped
    assert (Path(result.path) / "model.safetensors").read_bytes() == hub.repos["test/tiny"].files["model.safetensors"]


def _cli_env(hub: FakeHub) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_killed_pull_resumes_in_a_new_process(hub: FakeHub, tmp_path: Path) -> None:
    hub.stall.add("model.safetensors")
    cmd = [sys.executable, "-m", "sambay_cli", "pull", "test/tiny", "--json"]
    proc = subprocess.Popen(cmd, env=_cli_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert hub.stalled.wait(timeout=60), "the download never reached the weights"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    hub.stall.clear()
    hub.release.set()
    small_files_fetched = {n: len(hub.gets(n)) for n in NEEDED if n != "model.safetensors"}
    assert all(v == 1 for v in small_files_fetched.values()), small_files_fetched

    done = subprocess.run(cmd, env=_cli_env(hub), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert {"path", "revision", "commit", "files", "bytes"} <= set(info)
    assert info["files"] == NEEDED
    # finished files were reused; only the interrupted one was fetched again
    assert {n: len(hub.gets(n)) for n in small_files_fetched} == small_files_fetched
    assert len(hub.gets("model.safetensors")) == 2
    assert info["downloaded_bytes"] == len(hub.repos["test/tiny"].files["model.safetensors"])
    weights = Path(info["path"]) / "model.safetensors"
    assert weights.read_bytes() == hub.repos["test/tiny"].files["model.safetensors"]


def test_cli_prints_path_and_progress(hub: FakeHub, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sambay_cli", "pull", "test/tiny", "--local-dir", str(tmp_path / "m")]
    env = {**_cli_env(hub), "TTY_COMPATIBLE": "1"}  # rich draws its live progress as on a terminal
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((tmp_path / "m").resolve())
    assert "total" in done.stderr and "kB" in done.stderr  # the progress display
    assert done.stderr.strip().splitlines()[-1].endswith("verified")
    quiet = subprocess.run([*cmd, "--json", "--force"], env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["path"] == str((tmp_path / "m").resolve())
    assert quiet.stderr == ""  # no progress display in --json mode
    # user errors: one line on stderr, exit 2, no traceback
    bad = subprocess.run(
        [sys.executable, "-m", "sambay_cli", "pull", "test/missing"], env=_cli_env(hub), capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "not found" in bad.stderr


# --------------------------------------------------------------------------------------------------- errors
def test_404_repo_and_revision(hub: FakeHub) -> None:
    with pytest.raises(SambaYError, match=r"not found.*404"):
        _pull("test/missing")
    with pytest.raises(SambaYError, match="revision 'v9' not found"):
        _pull(revision="v9")


def test_401_private_repo(hub: FakeHub) -> None:
    hub.repos["test/private"] = FakeRepo(tiny_repo_files(), private=True)
    with pytest.raises(SambaYError, match="401 Unauthorized: no HF_TOKEN is set") as info:
        _pull("test/private")
    assert "\n" not in str(info.value)


def test_gated_repo_needs_token(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.repos["test/gated"] = FakeRepo(tiny_repo_files(), gated=True)
    with pytest.raises(SambaYError, match="is gated: accept its terms at .*/test/gated.*HF_TOKEN"):
        _pull("test/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SambaYError, match="gated"):
        _pull("test/gated")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert _pull("test/gated").files == NEEDED


def test_no_network(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(SambaYError, match="cannot reach .*no network"):
        _pull()


def test_corrupt_safetensors_header(hub: FakeHub) -> None:
    files = tiny_repo_files()
    weights = bytearray(files["model.safetensors"])
    weights[8:12] = b"\x00\xff{["
    files["model.safetensors"] = bytes(weights)
    hub.repos["test/corrupt"] = FakeRepo(files)
    with pytest.raises(SambaYError, match="model.safetensors is not a valid safetensors file: header is not JSON"):
        _pull("test/corrupt")


def test_corrupted_in_transit_fails_sha256(hub: FakeHub) -> None:
    files = tiny_repo_files()
    repo = FakeRepo(files)
    damaged = bytearray(files["model.safetensors"])
    damaged[-1] ^= 0xFF
    repo.served_override["model.safetensors"] = bytes(damaged)
    hub.repos["test/flaky"] = repo
    with pytest.raises(SambaYError, match="sha256.*--force-download"):
        _pull("test/flaky")
    # the header check alone would not have caught it
    result = _pull("test/flaky", check_hashes=False)
    assert check_safetensors_header(Path(result.path) / "model.safetensors").tensor_names
    # once the server is healthy, --force-download repairs the cache
    repo.served_override.clear()
    assert _pull("test/flaky", force_download=True).files == NEEDED


def test_disk_full(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    real_usage = shutil.disk_usage
    monkeypatch.setattr(pull_module.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(SambaYError, match="not enough disk space"):
        _pull()
    monkeypatch.setattr(pull_module.shutil, "disk_usage", real_usage)

    import huggingface_hub

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_space)
    with pytest.raises(SambaYError, match="disk full"):
        _pull()


def test_not_a_model_repo(hub: FakeHub) -> None:
    files = tiny_repo_files()
    files["pytorch_model.bin"] = files.pop("model.safetensors")
    hub.repos["test/bin"] = FakeRepo(files)
    with pytest.raises(SambaYError, match="no \\*.safetensors weights.*pytorch_model.bin"):
        _pull("test/bin")
    with pytest.raises(SambaYError, match="not a Hugging Face repo id"):
        _pull("bad id with spaces")


# --------------------------------------------------------------------------------------------------- pure functions
def test_select_model_files_on_the_real_repo_listing() -> None:
    index = json.loads((FIXTURES / "phi4flash-hub-metadata" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    listing = [
        ".gitattributes", "CODE_OF_CONDUCT.md", "LICENSE", "README.md", "SECURITY.md", "added_tokens.json",
        "config.json", "configuration_phi4flash.py", "generation_config.json", "merges.txt",
        "model.safetensors.index.json", "modeling_phi4flash.py", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.json", "data_summary_card.md", "figures/x.png", *shards,
    ]  # fmt: skip
    chosen = select_model_files(listing)
    assert set(chosen) == {
        "added_tokens.json", "config.json", "generation_config.json", "merges.txt", "model.safetensors.index.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", *shards,
    }  # fmt: skip
    with_code = select_model_files(listing, include_remote_code=True)
    assert set(with_code) - set(chosen) == {"configuration_phi4flash.py", "modeling_phi4flash.py"}


def test_safetensors_header_checks(tmp_path: Path) -> None:
    good = (TINY_MODEL / "model.safetensors").read_bytes()
    summary = check_safetensors_header(TINY_MODEL / "model.safetensors")
    assert summary.tensor_names and summary.data_bytes > 0
    cases = {
        "truncated": good[:-10],
        "short": good[:5],
        "huge_header": struct.pack("<Q", 1 << 40) + good[8:],
        "padded": good + b"\x00" * 8,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(SambaYError, match="not a valid safetensors file"):
            check_safetensors_header(path)
    # a header whose tensor spans the wrong number of bytes
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["shape"] = [*header[first]["shape"], 2]
    raw = json.dumps(header).encode()
    (tmp_path / "shape.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + good[8 + n :])
    with pytest.raises(SambaYError, match="needs"):
        check_safetensors_header(tmp_path / "shape.safetensors")


def test_pull_help_lists_options() -> None:
    from typer.testing import CliRunner

    from sambay_cli.cli import app

    out = CliRunner().invoke(app, ["pull", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--revision", "--local-dir", "--include-remote-code", "--json", "--offline", "--force-download"):
        assert option in out
    assert "microsoft/Phi-4-mini-flash-reasoning" in out
