"""Model repos on the Hugging Face Hub: `gpt models pull ORG/NAME[@REVISION]` and the local cache.

Owns naming a repo (`RepoRef`), choosing the files a model needs (config, safetensors weights,
tokenizer files: never pickle weights, never other formats), fetching them through
`huggingface_hub` into its own cache (resumable, retried, with its progress bars) and finding a
repo already in that cache, which works offline. It returns the snapshot directory; converting
it into the store is `interop.import_hf_dir`'s.

The environment is read at each call, as the `hf` command reads it: `HF_ENDPOINT`, `HF_TOKEN`,
`HF_HOME` / `HF_HUB_CACHE` (where the cache is) and `HF_HUB_OFFLINE` (only the cache is used).
`huggingface_hub` is an optional extra, imported only inside the functions that download.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.errors import GptError

HINT = 'downloading models needs huggingface_hub: pip install "gptcli[hub]"'
# Files a model directory may need besides its weights; anything else in a repo is left there.
CONFIG = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_PATTERN = re.compile(rf"(?P<org>{PART})/(?P<name>{PART})(?:@(?P<revision>[^\s@]+))?")


@dataclass(frozen=True)
class RepoRef:
    """`ORG/NAME` and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        """The default name in the store: the repo's last path part."""
        return self.repo_id.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo(text: str) -> RepoRef | None:
    """`ORG/NAME[@REVISION]` -> RepoRef; None for anything else."""
    match = REPO_PATTERN.fullmatch(text)
    if match is None or ".." in text:
        return None
    return RepoRef(f"{match['org']}/{match['name']}", match["revision"])


def require_repo(text: str) -> RepoRef:
    ref = parse_repo(text)
    if ref is None:
        raise GptError(f"{text!r} is not a Hugging Face model repo (expected ORG/NAME[@REVISION])")
    return ref


# -- the environment ------------------------------------------------------------------------
def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Where `huggingface_hub` keeps downloads: HF_HUB_CACHE, else HF_HOME/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's own login, if any


# -- the local cache ------------------------------------------------------------------------
def repo_folder(ref: RepoRef) -> Path:
    return cache_dir() / ("models--" + ref.repo_id.replace("/", "--"))


def cached_snapshot(ref: RepoRef) -> Path | None:
    """The cached snapshot of `ref` (its revision, else `main`) that holds a config; or None.

    A revision is a commit hash, or a branch or tag name written under `refs/` by a download.
    """
    folder = repo_folder(ref)
    revision = ref.revision or "main"
    commit = revision
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
    if not commit or "/" in commit or commit.startswith("."):
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if (snapshot / CONFIG).is_file() else None


def import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise GptError(HINT) from None
    return huggingface_hub


# -- choosing and fetching files ------------------------------------------------------------
def files_to_fetch(ref: RepoRef, repo_files: list[str]) -> list[str]:
    """The config, tokenizer and safetensors files of a repo's listing (top level only).

    Weights: `model.safetensors`, or the index and every shard it names (read after the index
    is fetched, see `pull`). A repo with only pickle weights is refused, saying why.
    """
    present = set(repo_files)
    if CONFIG not in present:
        raise GptError(f"{ref}: no {CONFIG} at the top of the repo; not a transformers model")
    chosen = [CONFIG, *(f for f in TOKENIZER_FILES if f in present)]
    if SAFETENSORS in present:
        return [*chosen, SAFETENSORS]
    if SAFETENSORS_INDEX in present:
        return [*chosen, SAFETENSORS_INDEX]
    pickles = [f for f in PICKLE_WEIGHTS if f in present]
    if pickles:
        raise GptError(
            f"{ref}: the repo has only pickle weights ({pickles[0]}), and gptcli never loads "
            "pickle (unpickling can run arbitrary code); ask for a revision with "
            "model.safetensors, or convert it with transformers and `gpt models import DIR`"
        )
    raise GptError(f"{ref}: the repo has no {SAFETENSORS} weights")


def shard_names(index: Path, ref: RepoRef) -> list[str]:
    import json

    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise GptError(f"{ref}: {SAFETENSORS_INDEX} has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    if any(Path(n).name != n or not n.endswith(".safetensors") for n in names):
        raise GptError(f"{ref}: {SAFETENSORS_INDEX} names shards that are not plain .safetensors")
    return names


def check_config(path: Path, ref: RepoRef) -> None:
    """Refuses an architecture we cannot import before any weights are fetched."""
    from gptcli import hf
    from gptcli.store import read_json

    raw = read_json(path)
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise GptError(f"{ref}: config.json names no model_type")
    hf.config_from_hf(raw, str(ref))  # raises for another architecture, naming it


def pull(ref: RepoRef) -> Path:
    """Fetches what a model needs from the Hub into the cache; the snapshot directory.

    Offline (HF_HUB_OFFLINE), only the cache is looked at. Partial downloads stay in the cache
    as `.incomplete` blobs and are resumed by the next pull; a dropped connection is resumed
    by huggingface_hub's own retries.
    """
    if offline():
        snapshot = cached_snapshot(ref)
        if snapshot is None:
            raise GptError(
                f"{ref} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE is "
                "set: nothing can be downloaded"
            )
        return snapshot
    hub = import_hub()
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = hub.HfApi(endpoint=endpoint(), token=token())
    try:
        info = api.model_info(ref.repo_id, revision=ref.revision)
        commit = info.sha
        names = files_to_fetch(ref, [s.rfilename for s in info.siblings or []])

        def fetch(filename: str) -> Path:
            return Path(
                hub.hf_hub_download(
                    ref.repo_id,
                    filename,
                    revision=commit,
                    cache_dir=cache_dir(),
                    endpoint=endpoint(),
                    token=token(),
                )
            )

        check_config(fetch(CONFIG), ref)
        for name in names[1:]:
            path = fetch(name)
            if name == SAFETENSORS_INDEX:
                for shard in shard_names(path, ref):
                    fetch(shard)
    except GatedRepoError:
        raise GptError(
            f"{ref}: the repo is gated; accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise GptError(
            f"{ref}: no such model repo on the Hub (or it is private: set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise GptError(f"{ref}: no revision {ref.revision!r} in the repo") from None
    except HfHubHTTPError as exc:
        raise GptError(f"{ref}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # connection refused, DNS, a download that never completed
        if not isinstance(exc, OSError) and not network_error(exc):
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GptError(f"{ref}: download failed: {first}") from None
    write_ref(ref, str(commit))  # later offline imports find the branch or tag name too
    return repo_folder(ref) / "snapshots" / str(commit)


def network_error(exc: Exception) -> bool:
    """An HTTP client's transport error (httpx, requests, urllib3: whichever the hub uses)."""
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def write_ref(ref: RepoRef, commit: str) -> None:
    revision = ref.revision or "main"
    if revision == commit or "/" in revision or revision.startswith("."):
        return
    path = repo_folder(ref) / "refs" / revision
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(commit, encoding="utf-8")
