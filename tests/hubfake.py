"""Test helpers: a tiny GPT-2 written as a Hugging Face directory, the Hub's cache layout built
by hand, and a stand-in for the Hub's HTTP API on 127.0.0.1 (what `huggingface_hub` asks of it:
the model's info with its file list, then HEAD and ranged GETs of each file under /resolve/)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from gptcli import hf
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tokenizer import Tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hf_dir(
    directory: Path, corpus: Path, seed: int = 0, n_embd: int = 32, n_layer: int = 2
) -> Path:
    """A random tiny GPT-2 (byte-level BPE with <|endoftext|>) as transformers would save it."""
    text = corpus.read_text(encoding="utf-8")
    tokenizer = Tokenizer.train_bpe([text], 300)
    config = ModelConfig(
        family="gpt2",
        vocab_size=tokenizer.vocab_size,
        block_size=64,
        n_layer=n_layer,
        n_head=2,
        n_embd=n_embd,
    )
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # a wider spread than the default init: choices differ in score
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    directory.mkdir(parents=True, exist_ok=True)
    hf.write_hf_files(directory, model, tokenizer)
    return directory


def cache_repo(cache: Path, repo_id: str, source: Path, revision: str = "main") -> Path:
    """Copies `source` into the hub cache layout: blobs, snapshots/COMMIT, refs/REVISION."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        data = path.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    (folder / "refs").mkdir()
    (folder / "refs" / revision).write_text(COMMIT)
    return snapshot


@dataclass
class FakeHub:
    """Files of repos by repo id; `drop` names files whose first GET breaks off 1 MiB before
    its end."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, range
    tokens: set[str] = field(default_factory=set)  # Authorization headers seen
    url: str = ""

    def add(self, repo_id: str, directory: Path, skip: tuple[str, ...] = ()) -> None:
        self.repos[repo_id] = {
            p.name: p.read_bytes() for p in directory.iterdir() if p.name not in skip
        }


INFO = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/?]+))?")
RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)")


def handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def not_found(self, head: bool) -> None:
            body = json.dumps({"error": "Repository not found"}).encode()
            self.reply(
                404,
                body,
                {
                    "Content-Length": str(len(body)),
                    "Content-Type": "application/json",
                    "X-Error-Code": "RepoNotFound",
                },
                head,
            )

        def handle_any(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            hub.tokens.add(self.headers.get("Authorization", ""))
            info = INFO.fullmatch(path)
            if info and not head:
                files = hub.repos.get(info["repo"])
                if files is None:
                    return self.not_found(head)
                body = json.dumps(
                    {
                        "id": info["repo"],
                        "modelId": info["repo"],
                        "sha": COMMIT,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    }
                ).encode()
                return self.reply(
                    200,
                    body,
                    {"Content-Length": str(len(body)), "Content-Type": "application/json"},
                    head,
                )
            resolve = RESOLVE.fullmatch(path)
            files = hub.repos.get(resolve["repo"]) if resolve else None
            if resolve is None or files is None or resolve["file"] not in files:
                return self.not_found(head)
            data = files[resolve["file"]]
            etag = hashlib.sha256(data).hexdigest()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{etag}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged and not head:
                start = int(ranged[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            if not head and resolve["file"] in hub.drop:
                hub.drop.discard(resolve["file"])  # once: the retry gets the rest
                self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: max(0, len(body) - (1 << 20))])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            return self.reply(206 if start else 200, body, headers, head)

        def do_GET(self) -> None:
            self.handle_any(head=False)

        def do_HEAD(self) -> None:
            self.handle_any(head=True)

    return Handler


@contextmanager
def serve_hub(hub: FakeHub) -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def copy_dir(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))
