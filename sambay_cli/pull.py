"""`sambay pull`: download a model from the Hugging Face Hub, only the files it needs, then check them.

Files go into the standard Hugging Face cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) or, with
``local_dir``, into a plain folder (staged in a hidden sibling folder and renamed into place when complete).
Downloading is done by ``huggingface_hub`` (HTTP or Xet), one file at a time, small files first; files finished by an
interrupted run are reused by the next one. ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``/``HF_HOME`` and
``HF_HUB_OFFLINE`` are read when :func:`pull` runs (not at import).

After the download every ``*.safetensors`` header is parsed and checked against the file size, the shard index is
checked for completeness (every tensor it lists is in the shard it names), and files whose sha256 the Hub publishes
(LFS files) are hashed and compared.

:func:`resolve_model_dir` maps a local folder or a Hub repo id (already pulled: looked up in the cache only, never the
network) to a model folder; the generate / eval / info commands use it.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SambaYError

__all__ = [
    "DEFAULT_REPO_ID",
    "PullResult",
    "RemoteFile",
    "pull",
    "run_pull",
    "resolve_model_dir",
    "select_model_files",
    "check_safetensors_header",
    "verify_model_dir",
]

DEFAULT_REPO_ID = "microsoft/Phi-4-mini-flash-reasoning"
DEFAULT_ENDPOINT = "https://huggingface.co"

# Top-level files a SambaY model needs: config, generation config, weights + index, tokenizer, chat template.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
REMOTE_CODE_PATTERNS: tuple[str, ...] = ("*.py",)

_REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}  # fmt: skip
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HASH_CHUNK = 8 * 1024 * 1024
_LOCAL_DIR_MARKER = ".sambay-pull.json"


# --------------------------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class RemoteFile:
    """One repository file: its path, size in bytes and (LFS files) the sha256 the Hub publishes."""

    name: str
    size: int | None = None
    sha256: str | None = None


@dataclass
class PullResult:
    """What `pull` produced: the local folder and the files in it."""

    repo_id: str
    revision: str
    commit: str
    path: str
    files: list[str]
    bytes: int
    downloaded_bytes: int = 0
    offline: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HubSettings:
    """Hub settings read from the environment at call time (huggingface_hub reads some of them at import)."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool

    @classmethod
    def from_env(cls, *, cache_dir: Path | None = None, token: str | None = None, offline: bool = False) -> HubSettings:
        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        return cls(
            endpoint=endpoint,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
            token=token or os.environ.get("HF_TOKEN") or None,
            offline=offline or env_offline,
        )


def default_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


# --------------------------------------------------------------------------------------------------- file selection
def _is_top_level(name: str) -> bool:
    return "/" not in name


def select_model_files(
    names: Iterable[str], *, include_remote_code: bool = False, extra_patterns: Sequence[str] = ()
) -> list[str]:
    """The repository files a model needs (top level only), plus remote code and ``extra_patterns`` when asked."""
    patterns = list(MODEL_FILE_PATTERNS)
    if include_remote_code:
        patterns += REMOTE_CODE_PATTERNS
    selected = [
        n for n in names if _is_top_level(n) and any(fnmatch.fnmatchcase(n, p) for p in patterns)
    ]
    selected += [n for n in names if n not in selected and any(fnmatch.fnmatchcase(n, p) for p in extra_patterns)]
    return sorted(set(selected))


def _check_repo_has_a_model(repo_id: str, names: Sequence[str], all_names: Sequence[str]) -> None:
    if "config.json" not in names:
        raise SambaYError(f"{repo_id} has no config.json at the top level: it is not a model repository")
    if not any(n.endswith(".safetensors") for n in names):
        other = [n for n in all_names if n.endswith((".bin", ".pt", ".pth", ".gguf"))]
        hint = f" (it has {other[0]}; only safetensors weights are supported)" if other else ""
        raise SambaYError(f"{repo_id} has no *.safetensors weights{hint}")


# --------------------------------------------------------------------------------------------------- verification
@dataclass
class SafetensorsSummary:
    tensor_names: list[str]
    data_bytes: int


def check_safetensors_header(path: Path) -> SafetensorsSummary:
    """Parse and check a safetensors header without reading the tensor data.

    Checks: 8-byte little-endian header length within the file, a JSON object, known dtypes, integer shapes,
    ``data_offsets`` whose length matches dtype x shape, and offsets that tile the data area exactly (no gap, no
    overlap, nothing past the end of the file). Raises SambaYError naming the file.
    """

    def bad(reason: str) -> SambaYError:
        return SambaYError(f"{path.name} is not a valid safetensors file: {reason}")

    try:
        file_size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"only {len(prefix)} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len == 0 or header_len > _MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise bad(f"header length {header_len} does not fit a {file_size}-byte file")
            raw = f.read(header_len)
    except OSError as e:
        raise SambaYError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    data_size = file_size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        expected = numel * _SAFETENSORS_DTYPE_BYTES[dtype]
        if dtype == "F4":
            expected = (numel + 1) // 2
        if offsets[1] - offsets[0] != expected:
            raise bad(f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes, {dtype}{shape} needs {expected}")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise bad(f"tensor {name!r} starts at {start}, expected {position} (gap or overlap)")
        position = end
    if position != data_size:
        raise bad(f"tensors cover {position} bytes but the data area holds {data_size} (truncated or padded file)")
    return SafetensorsSummary(tensor_names=[s[2] for s in spans], data_bytes=data_size)


def _sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(done)
    return digest.hexdigest()


def verify_model_dir(
    model_dir: Path,
    files: Sequence[str],
    *,
    expected: dict[str, RemoteFile] | None = None,
    check_hashes: bool = True,
    on_hash: Callable[[str, int, int], None] | None = None,
) -> list[str]:
    """Check a downloaded model folder; return warnings, raise SambaYError on a defect.

    - every file in ``files`` exists, with the size (and, for LFS files when ``check_hashes``, the sha256) the Hub
      published in ``expected``;
    - config.json is a JSON object;
    - every ``*.safetensors`` header is valid (:func:`check_safetensors_header`);
    - the shard index (``*.safetensors.index.json``) is complete: each shard it names is present and holds each tensor
      the index assigns to it.

    ``on_hash(name, bytes_hashed, file_size)`` reports hashing progress.
    """
    expected = expected or {}
    warnings: list[str] = []
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise SambaYError(f"{name} is missing from {model_dir} (interrupted download? run the pull again)")
        remote = expected.get(name)
        if remote and remote.size is not None and path.stat().st_size != remote.size:
            raise SambaYError(
                f"{name} has {path.stat().st_size} bytes, the Hub says {remote.size}: corrupt download, "
                "run the pull again with --force-download"
            )
        if check_hashes and remote and remote.sha256:
            size = path.stat().st_size
            report = (lambda done, name=name, size=size: on_hash(name, done, size)) if on_hash else None
            if _sha256_of(path, report) != remote.sha256:
                raise SambaYError(f"{name} does not match its sha256 on the Hub: corrupt download, rerun with --force-download")

    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SambaYError(f"config.json in {model_dir} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise SambaYError(f"config.json in {model_dir} is not a JSON object")

    shard_tensors: dict[str, set[str]] = {}
    for name in files:
        if name.endswith(".safetensors"):
            shard_tensors[name] = set(check_safetensors_header(model_dir / name).tensor_names)

    for index_name in [n for n in files if n.endswith(".safetensors.index.json")]:
        warnings += _check_index(model_dir, index_name, shard_tensors)
    return warnings


def _check_index(model_dir: Path, index_name: str, shard_tensors: dict[str, set[str]]) -> list[str]:
    try:
        index = json.loads((model_dir / index_name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SambaYError(f"{index_name} is not valid JSON: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SambaYError(f"{index_name} has no 'weight_map'")
    missing_shards = sorted({s for s in weight_map.values() if s not in shard_tensors})
    if missing_shards:
        raise SambaYError(f"{index_name} names shard(s) that were not downloaded: {', '.join(missing_shards[:3])}")
    for tensor, shard in weight_map.items():
        if tensor not in shard_tensors[shard]:
            raise SambaYError(f"{index_name} puts tensor {tensor!r} in {shard}, which does not hold it")
    indexed_shards = set(weight_map.values())
    return [f"{shard} is not referenced by {index_name}" for shard in sorted(set(shard_tensors) - indexed_shards)]


# --------------------------------------------------------------------------------------------------- errors
def _exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _status_code(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(error: BaseException) -> bool:
    names = {"ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "ProxyError",
             "RemoteProtocolError", "ReadError", "NetworkError", "OfflineModeIsEnabled"}  # fmt: skip
    return any(
        type(e).__name__ in names or isinstance(e, (ConnectionError, TimeoutError)) for e in _exception_chain(error)
    )


def _token_available(settings: HubSettings) -> bool:
    if settings.token:
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:
        return False


def hub_error_to_sambay(error: BaseException, *, repo_id: str, revision: str, settings: HubSettings) -> SambaYError:
    """One clear line for each way talking to the Hub can fail."""
    from huggingface_hub.utils import (  # also where huggingface_hub < 0.24 keeps them
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_url = f"{settings.endpoint}/{repo_id}"
    token_hint = "a token is set but" if _token_available(settings) else "no HF_TOKEN is set;"
    for e in _exception_chain(error):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return SambaYError(f"disk full while downloading {repo_id}: free space or use --local-dir on another disk")
    if isinstance(error, GatedRepoError):
        return SambaYError(
            f"{repo_id} is gated: accept its terms at {repo_url} while logged in, then set HF_TOKEN to a read token "
            f"of that account ({settings.endpoint}/settings/tokens)"
        )
    if isinstance(error, RevisionNotFoundError):
        return SambaYError(f"revision {revision!r} not found in {repo_id} (a branch, tag or commit hash)")
    status = _status_code(error)
    if isinstance(error, RepositoryNotFoundError):
        if status == 401:
            return SambaYError(
                f"{repo_id}: 401 Unauthorized: {token_hint} the repository is private, gated or does not exist; "
                f"if it is gated, request access at {repo_url} and set HF_TOKEN"
            )
        return SambaYError(f"{repo_id}: repository not found on {settings.endpoint} (404); check the id")
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return SambaYError(
            f"{repo_id}: {status} {'Unauthorized' if status == 401 else 'Forbidden'}: {token_hint} the token lacks "
            f"access; for a gated repository request access at {repo_url}, then use a token of that account"
        )
    if isinstance(error, HfHubHTTPError) and status == 404:
        return SambaYError(f"{repo_id}: a file was not found at revision {revision!r} (404)")
    if isinstance(error, HfHubHTTPError) and status is not None:
        return SambaYError(f"{repo_id}: the Hub answered HTTP {status}; try again later")
    if _is_connection_error(error) or isinstance(error, LocalEntryNotFoundError):
        if settings.offline:
            return SambaYError(
                f"{repo_id} (revision {revision!r}) is not in the Hugging Face cache {settings.cache_dir} and "
                "offline mode is on (HF_HUB_OFFLINE=1 or --offline): pull it once with network access"
            )
        return SambaYError(
            f"cannot reach {settings.endpoint} (no network?): check the connection, or set HF_HUB_OFFLINE=1 to use "
            "files already in the cache"
        )
    if isinstance(error, OSError):
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return SambaYError(f"download of {repo_id} failed: {detail}; run the pull again to resume")
    return SambaYError(f"download of {repo_id} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


# --------------------------------------------------------------------------------------------------- progress
class _Progress:
    """A rich progress display on stderr: total bytes of the pull plus the file being fetched."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self.enabled = enabled
        self.done_bytes = 0
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._total_task = self._progress.add_task("total", total=total_bytes)
        self._file_task = self._progress.add_task("", total=None, visible=False)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_file(self, name: str, size: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._file_task, description=name, total=size, completed=0, visible=True)

    def file_bytes(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._file_task, completed=n)
            self._progress.update(self._total_task, completed=self.done_bytes + n)

    def end_file(self, size: int) -> None:
        self.done_bytes += size
        if self._progress is not None:
            self._progress.update(self._file_task, visible=False)
            self._progress.update(self._total_task, completed=self.done_bytes)

    def hashing(self, name: str, done: int, size: int) -> None:
        if self._progress is not None:
            self._progress.update(self._file_task, description=f"sha256 {name}", total=size, completed=done, visible=True)


def _tqdm_adapter(progress: _Progress) -> type:
    """A class with tqdm's interface (as huggingface_hub uses it) that forwards byte counts to ``progress``."""

    class _HubBar:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.total = kwargs.get("total")
            self.n = int(kwargs.get("initial") or 0)
            self.format_dict: dict[str, Any] = {}
            self.disable = False
            if self.n:
                progress.file_bytes(self.n)

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            progress.file_bytes(max(self.n, 0))

        def update_transfer(self, n: int | float | None = 1) -> None:  # network bytes (Xet): bytes written count
            pass

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        set_description_str = set_description
        set_transfer_postfix_str = set_postfix_str

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> _HubBar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    return _HubBar


# --------------------------------------------------------------------------------------------------- pulling
def _validate_repo_id(repo_id: str) -> None:
    if not _REPO_ID_RE.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise SambaYError(f"{repo_id!r} is not a Hugging Face repo id (expected 'namespace/name')")


def _storage_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def _write_ref(cache_dir: Path, repo_id: str, revision: str, commit: str) -> None:
    """Record ``revision -> commit`` in the cache (refs/<revision>) so offline look-ups of a branch/tag work."""
    if revision == commit:
        return
    ref_path = _storage_folder(cache_dir, repo_id) / "refs" / revision
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    if ref_path.is_file() and ref_path.read_text().strip() == commit:
        return
    tmp = ref_path.with_name(f".{ref_path.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref_path)


def _list_remote_files(repo_id: str, revision: str, settings: HubSettings) -> tuple[str, list[RemoteFile]]:
    """Commit hash of ``revision`` and every file of the repository with size and LFS sha256."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as e:
        raise hub_error_to_sambay(e, repo_id=repo_id, revision=revision, settings=settings) from None
    if not info.sha:
        raise SambaYError(f"{settings.endpoint} returned no commit hash for {repo_id}@{revision}")
    files = [
        RemoteFile(
            name=s.rfilename,
            size=(s.lfs.size if s.lfs is not None else s.size),
            sha256=(s.lfs.sha256 if s.lfs is not None else None),
        )
        for s in (info.siblings or [])
    ]
    return info.sha, files


def _check_free_space(target: Path, needed: int) -> None:
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise SambaYError(
            f"not enough disk space in {probe}: the download needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def _download_files(
    repo_id: str,
    commit: str,
    files: Sequence[RemoteFile],
    *,
    settings: HubSettings,
    local_dir: Path | None,
    force_download: bool,
    progress: _Progress,
) -> None:
    import inspect

    from huggingface_hub import hf_hub_download

    progress_kwargs: dict[str, Any] = {}
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # older releases draw their own tqdm bars
        progress_kwargs["tqdm_class"] = _tqdm_adapter(progress)
    for remote in files:  # small files first: an interruption then only costs the large one in flight
        progress.start_file(remote.name, remote.size)
        hf_hub_download(
            repo_id,
            remote.name,
            revision=commit,
            cache_dir=str(settings.cache_dir),
            local_dir=str(local_dir) if local_dir is not None else None,
            endpoint=settings.endpoint,
            token=settings.token,
            force_download=force_download,
            **progress_kwargs,
        )
        progress.end_file(remote.size or 0)


def _bytes_present(settings: HubSettings, repo_id: str, commit: str, local_dir: Path | None, name: str) -> int:
    base = local_dir if local_dir is not None else _storage_folder(settings.cache_dir, repo_id) / "snapshots" / commit
    path = base / name
    return path.stat().st_size if path.is_file() else 0


def _local_dir_marker(local_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((local_dir / ".cache" / _LOCAL_DIR_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _staging_dir_for(local_dir: Path) -> Path:
    return local_dir.with_name(f".{local_dir.name}.sambay-partial")


def _install_local_dir(staging: Path, local_dir: Path, marker: dict[str, Any]) -> None:
    """Rename the complete staging folder to ``local_dir`` (replacing it, which --force allowed)."""
    (staging / ".cache").mkdir(exist_ok=True)
    (staging / ".cache" / _LOCAL_DIR_MARKER).write_text(json.dumps(marker, indent=2))
    if local_dir.exists():
        backup = local_dir.with_name(f".{local_dir.name}.sambay-old")
        shutil.rmtree(backup, ignore_errors=True)
        local_dir.rename(backup)
        staging.rename(local_dir)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(local_dir)


def _sync_library_offline_flag(offline: bool) -> None:
    """huggingface_hub fixes its offline flag when it is first imported; a process whose environment changed since
    (a notebook, a test run) would otherwise refuse the network that the settings read now allow, or the reverse."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency
        return
    if hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = offline


def pull(
    repo_id: str = DEFAULT_REPO_ID,
    *,
    revision: str | None = None,
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
    include_remote_code: bool = False,
    include: Sequence[str] = (),
    token: str | None = None,
    offline: bool = False,
    force: bool = False,
    force_download: bool = False,
    check_hashes: bool = True,
    show_progress: bool = True,
) -> PullResult:
    """Download (or, offline, find in the cache) the files of a model and verify them. See the module docstring."""
    _validate_repo_id(repo_id)
    revision = revision or "main"
    settings = HubSettings.from_env(cache_dir=cache_dir, token=token, offline=offline)
    _sync_library_offline_flag(settings.offline)
    local_dir = Path(local_dir).expanduser().resolve() if local_dir is not None else None
    if settings.offline:
        if force_download:
            raise SambaYError("--force-download needs the network; it cannot be combined with offline mode")
        return _pull_offline(repo_id, revision, settings, local_dir, include_remote_code, include)

    commit, remote_files = _list_remote_files(repo_id, revision, settings)
    names = select_model_files(
        [f.name for f in remote_files], include_remote_code=include_remote_code, extra_patterns=include
    )
    _check_repo_has_a_model(repo_id, names, [f.name for f in remote_files])
    by_name = {f.name: f for f in remote_files}
    # small files first, the weights last
    selected = sorted((by_name[n] for n in names), key=lambda f: (f.name.endswith(".safetensors"), f.size or 0, f.name))

    target_dir, staging = _prepare_target(local_dir, repo_id, commit, force)
    if target_dir is not None and staging is None:  # local_dir already holds this exact pull
        warnings = verify_model_dir(target_dir, names, expected=by_name, check_hashes=check_hashes)
        return _result(repo_id, revision, commit, target_dir, names, 0, warnings)

    download_dir = staging  # None = the HF cache
    needed = sum(
        max((f.size or 0) - _bytes_present(settings, repo_id, commit, download_dir, f.name), 0) for f in selected
    )
    _check_free_space(download_dir or settings.cache_dir, needed)

    total_bytes = sum(f.size or 0 for f in selected)
    with _Progress(total_bytes, show_progress) as progress:
        try:
            _download_files(
                repo_id,
                commit,
                selected,
                settings=settings,
                local_dir=download_dir,
                force_download=force_download,
                progress=progress,
            )
        except SambaYError:
            raise
        except Exception as e:
            raise hub_error_to_sambay(e, repo_id=repo_id, revision=revision, settings=settings) from None
        if download_dir is None:
            _write_ref(settings.cache_dir, repo_id, revision, commit)
            model_dir = _storage_folder(settings.cache_dir, repo_id) / "snapshots" / commit
        else:
            model_dir = download_dir
        warnings = verify_model_dir(model_dir, names, expected=by_name, check_hashes=check_hashes, on_hash=progress.hashing)

    if staging is not None and local_dir is not None:
        _install_local_dir(staging, local_dir, {"repo_id": repo_id, "revision": revision, "commit": commit, "files": names})
        model_dir = local_dir
    return _result(repo_id, revision, commit, model_dir, names, needed, warnings)


def _prepare_target(local_dir: Path | None, repo_id: str, commit: str, force: bool) -> tuple[Path | None, Path | None]:
    """(local_dir, staging folder) for a --local-dir pull; (local_dir, None) when it already holds this commit;
    (None, None) for the cache."""
    if local_dir is None:
        return None, None
    if local_dir.exists() and not local_dir.is_dir():
        raise SambaYError(f"--local-dir {local_dir} exists and is not a directory")
    if local_dir.is_dir() and any(local_dir.iterdir()):
        marker = _local_dir_marker(local_dir)
        if marker and marker.get("repo_id") == repo_id and marker.get("commit") == commit and not force:
            return local_dir, None
        if not force:
            raise SambaYError(f"{local_dir} already exists and is not empty (use --force to replace it)")
    staging = _staging_dir_for(local_dir)
    staging.mkdir(parents=True, exist_ok=True)  # kept across interrupted runs: finished files are reused
    return local_dir, staging


def _pull_offline(
    repo_id: str,
    revision: str,
    settings: HubSettings,
    local_dir: Path | None,
    include_remote_code: bool,
    include: Sequence[str],
) -> PullResult:
    if local_dir is not None:
        marker = _local_dir_marker(local_dir)
        if not marker or marker.get("repo_id") != repo_id:
            raise SambaYError(f"offline mode: {local_dir} does not hold a pull of {repo_id}")
        model_dir, commit = local_dir, str(marker.get("commit", ""))
    else:
        model_dir = _cached_snapshot(repo_id, revision, settings)
        commit = model_dir.name
    present = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    names = select_model_files(present, include_remote_code=include_remote_code, extra_patterns=include)
    _check_repo_has_a_model(repo_id, names, present)
    warnings = verify_model_dir(model_dir, names, check_hashes=False)
    return _result(repo_id, revision, commit, model_dir, names, 0, warnings, offline=True)


def _cached_snapshot(repo_id: str, revision: str, settings: HubSettings) -> Path:
    """The cached snapshot folder of ``repo_id@revision``, without any network access."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(settings.cache_dir),
            local_files_only=True,
            allow_patterns=list(MODEL_FILE_PATTERNS),
        )
    except Exception as e:
        offline = HubSettings(settings.endpoint, settings.cache_dir, settings.token, offline=True)
        raise hub_error_to_sambay(e, repo_id=repo_id, revision=revision, settings=offline) from None
    return Path(path)


def _result(
    repo_id: str,
    revision: str,
    commit: str,
    model_dir: Path,
    names: list[str],
    downloaded: int,
    warnings: list[str],
    *,
    offline: bool = False,
) -> PullResult:
    total = sum((model_dir / n).stat().st_size for n in names)
    return PullResult(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        path=str(model_dir),
        files=names,
        bytes=total,
        downloaded_bytes=downloaded,
        offline=offline,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------------- resolving
def resolve_model_dir(name_or_path: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A model folder for ``name_or_path``: an existing local directory as is; otherwise a Hub repo id looked up in
    the local Hugging Face cache only (never the network). Raises SambaYError telling to `sambay pull` it first."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SambaYError(f"{text} is a file, not a model directory")
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1)
    if looks_like_path or not _REPO_ID_RE.match(text):
        raise SambaYError(f"model directory not found: {text}")
    settings = HubSettings.from_env(offline=True)
    try:
        snapshot = _cached_snapshot(text, revision or "main", settings)
    except SambaYError:
        raise SambaYError(
            f"{text} is not a local directory and not in the Hugging Face cache ({settings.cache_dir}): "
            f"run `sambay pull {text}` first"
        ) from None
    if not (snapshot / "config.json").is_file():
        raise SambaYError(f"the cached snapshot of {text} has no config.json: run `sambay pull {text}` again")
    return snapshot


# --------------------------------------------------------------------------------------------------- CLI entry
def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def run_pull(
    repo_id: str,
    *,
    revision: str | None,
    local_dir: Path | None,
    cache_dir: Path | None,
    include_remote_code: bool,
    include: Sequence[str],
    offline: bool,
    force: bool,
    force_download: bool,
    check_hashes: bool,
    json_out: bool,
) -> PullResult:
    """`sambay pull`: pull, then print the local path (or one JSON object with --json)."""
    import typer

    result = pull(
        repo_id,
        revision=revision,
        local_dir=local_dir,
        cache_dir=cache_dir,
        include_remote_code=include_remote_code,
        include=include,
        offline=offline,
        force=force,
        force_download=force_download,
        check_hashes=check_hashes,
        show_progress=not json_out,
    )
    if json_out:
        typer.echo(json.dumps(result.to_json()))
    else:
        for warning in result.warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
        source = "offline, from the cache" if result.offline else f"{_human_bytes(result.downloaded_bytes)} downloaded"
        typer.echo(
            f"{result.repo_id}@{result.commit[:12]}: {len(result.files)} files, {_human_bytes(result.bytes)} "
            f"({source}), verified",
            err=True,
        )
        typer.echo(result.path)
    return result
