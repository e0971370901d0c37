"""The lab's Ollama depot (test-only): a release archive of the Ollama stand-in and a model registry.

`build` writes, under one directory served over HTTP on the lab's bridge:

- download/v<VERSION>/ollama-linux-amd64.tar.zst and sha256sum.txt, laid out like an Ollama
  release (bin/ollama, lib/ollama/...), holding the stand-in (ollama_standin.py), its config and
  the libnuma its engine (vLLM's CPU build) needs;
- v2/<namespace>/<model>/manifests/<tag> and v2/<namespace>/<model>/blobs/sha256:<hex>: each tag
  is a manifest whose layers are the files of the tiny test model, with their real sizes and
  sha256 digests.

`serve` serves the directory (GET and HEAD) until it is stopped, or for the duration of a command
given after `--`. `url` prints the depot's URL for a lab. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "ollama_standin.py"
DEFAULT_PORT = 8764
# The tags the lab's registry serves (all the tiny test model): the catalog's phase-1 model and baseline.
LAB_TAGS = {"mixtral:8x7b-instruct-v0.1-q4_K_M": "mixtral", "gemma2:2b": "gemma2"}
LIBNUMA = Path("/usr/lib/x86_64-linux-gnu/libnuma.so.1")
RUNNER_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--kv-cache-memory-bytes", "67108864"]
RUNNER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # vLLM binds its workers' torch.distributed (gloo) sockets to the host's address unless told otherwise.
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    # The engine runs inside the server process instead of two more Python processes (API server,
    # engine core, worker): a runner is ready in about 12 s instead of 25 s on a lab host, and
    # runners start at every model load. What the toolkit's own vLLM does is not changed by this.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
LAUNCHER = (
    "#!/bin/sh\n# Ollama stand-in (test-only): see lib/ollama/ollama_standin.py\n"
    'exec python3 "$(dirname "$(readlink -f "$0")")/../lib/ollama/ollama_standin.py" "$@"\n'
)
MODEL_FILES = [
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_member(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uname = info.gname = "root"
    archive.addfile(info, io.BytesIO(data))


def release_tar(version: str, registry: str, runner_venv: str, libnuma: Path = LIBNUMA, fault: str = "") -> bytes:
    """The uncompressed tar of a stand-in release, reproducible (fixed mtimes and owners); a fault (the
    stand-in's injector, e.g. "cannot-serve") is baked into its configuration."""
    config = {
        "version": version,
        "registry": registry,
        "runner": {"venv": runner_venv, "args": RUNNER_ARGS, "env": RUNNER_ENV},
        **({"fault": fault} if fault else {}),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        _tar_member(archive, "bin/ollama", LAUNCHER.encode(), 0o755)
        _tar_member(archive, "lib/ollama/ollama_standin.py", STANDIN.read_bytes(), 0o644)
        _tar_member(archive, "lib/ollama/standin.json", json.dumps(config, indent=2).encode(), 0o644)
        if libnuma.exists():
            _tar_member(archive, "lib/ollama/libnuma.so.1", libnuma.read_bytes(), 0o644)
    return buffer.getvalue()


def write_release(
    root: Path, version: str, registry: str, runner_venv: str, compression: str = "zst", fault: str = ""
) -> Path:
    """download/v<version>/ollama-linux-amd64.tar.<zst|tgz> plus sha256sum.txt; returns the archive."""
    folder = root / "download" / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    raw = release_tar(version, registry, runner_venv, fault=fault)
    if compression == "zst":
        archive = folder / "ollama-linux-amd64.tar.zst"
        subprocess.run(["zstd", "-q", "-f", "-19", "-o", str(archive)], input=raw, check=True)
    else:
        archive = folder / "ollama-linux-amd64.tgz"
        subprocess.run(["gzip", "-n", "-9"], input=raw, stdout=archive.open("wb"), check=True)
    sums = [f"{sha256_file(path)}  ./{path.name}" for path in sorted(folder.glob("ollama-linux-*"))]
    (folder / "sha256sum.txt").write_text("\n".join(sums) + "\n", encoding="utf-8")
    return archive


def _blob(registry_dir: Path, data: bytes | None = None, path: Path | None = None) -> tuple[str, int]:
    registry_dir.mkdir(parents=True, exist_ok=True)
    if path is not None:
        digest, size = f"sha256:{sha256_file(path)}", path.stat().st_size
        target = registry_dir / digest
        if not target.exists():
            shutil.copyfile(path, target)
    else:
        digest, size = f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)
        (registry_dir / digest).write_bytes(data)
    return digest, size


def write_model(root: Path, tag: str, model_dir: Path, family: str) -> dict:
    """Publish the files of model_dir under an Ollama tag (name:tag in the library namespace)."""
    name, _, version = tag.partition(":")
    base = root / "v2" / "library" / name
    layers = []
    for filename in MODEL_FILES:
        path = model_dir / filename
        if not path.exists():
            continue
        digest, size = _blob(base / "blobs", path=path)
        media = (
            "application/vnd.ollama.image.model"
            if filename == "model.safetensors"
            else "application/vnd.ollama.image.standin.file"
        )
        layers.append(
            {
                "mediaType": media,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.title": filename},
            }
        )
    config = {
        "model_format": "safetensors",
        "model_family": family,
        "model_families": [family],
        "model_type": "tiny",
        "file_type": "F32",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    config_digest, config_size = _blob(base / "blobs", data=json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }
    (base / "manifests").mkdir(parents=True, exist_ok=True)
    (base / "manifests" / (version or "latest")).write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


def lab_url(lab: str = "lab", port: int = DEFAULT_PORT) -> str:
    """The depot's URL on a lab's bridge (the gateway address the lab's hosts route through)."""
    status = subprocess.run(
        [str(HERE.parents[2] / "scripts" / "lab"), "--name", lab, "status", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    subnet = json.loads(status.stdout)["subnet"]
    return f"http://{ipaddress.ip_network(subnet).network_address + 1}:{port}"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves files; `server.bytes_per_second` (0: no limit) slows downloads like a far registry."""

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("DEPOT_VERBOSE"):
            super().log_message(format, *args)

    def copyfile(self, source, outputfile) -> None:
        rate = getattr(self.server, "bytes_per_second", 0)
        if not rate:
            super().copyfile(source, outputfile)
            return
        chunk = max(1, rate // 10)
        while block := source.read(chunk):
            outputfile.write(block)
            time.sleep(len(block) / rate)


def start_server(root: Path, url: str) -> http.server.ThreadingHTTPServer:
    """Serve root at url from a background thread; stop it with .shutdown() and .server_close()."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    handler = functools.partial(_Quiet, directory=str(root))
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    httpd = http.server.ThreadingHTTPServer((host, int(port)), handler)
    httpd.bytes_per_second = 0
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def serve(root: Path, url: str, command: list[str]) -> int:
    httpd = start_server(root, url)
    try:
        if not command:
            print(f"serving {root} at {url}", flush=True)
            threading.Event().wait()
        return subprocess.run(command, check=False).returncode
    finally:
        httpd.shutdown()
        httpd.server_close()


def build_lab_depot(root: Path, url: str, versions: list[str], cannot_serve: tuple[str, ...] = ()) -> dict[str, str]:
    """A depot for a lab: the stand-in releases asked for (those in cannot_serve built with that fault)
    and the tiny model under the catalog's tags.

    Returns the sha256 of each release's archive by version: the lab's inventory passes it to the
    role as ollama_archive_sha256 (LAB_OLLAMA_SHA256S, see sha256_env), as a site pins a release
    the role's catalog does not know."""
    from tests.models.tiny_model_cache import tiny_mixtral  # noqa: PLC0415 - only when building
    from tests.standins.ollama.runner_cache import runner_venv  # noqa: PLC0415

    venv, model = runner_venv(), tiny_mixtral()
    shutil.rmtree(root, ignore_errors=True)
    faults = {version: "cannot-serve" for version in cannot_serve}
    sums = {
        version: sha256_file(write_release(root, version, url, str(venv), fault=faults.get(version, "")))
        for version in [*versions, *cannot_serve]
    }
    for tag, family in LAB_TAGS.items():
        write_model(root, tag, model, family)
    return sums


def sha256_env(sums: dict[str, str]) -> dict[str, str]:
    """The environment that tells the lab's inventory the sha256 of each stand-in release."""
    return {"LAB_OLLAMA_SHA256S": json.dumps(sums, sort_keys=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="write the release archive and the registry")
    build.add_argument("root", type=Path)
    build.add_argument("--url", required=True, help="the depot's URL as hosts reach it")
    build.add_argument("--version", required=True)
    build.add_argument("--runner-venv", required=True)
    build.add_argument("--model-dir", type=Path, required=True)
    build.add_argument("--tag", action="append", required=True, help="TAG=FAMILY, e.g. gemma2:2b=gemma2")
    build.add_argument("--compression", choices=["zst", "tgz"], default="zst")
    lab = sub.add_parser("lab", help="build a lab's depot and serve it while a command given after -- runs")
    lab.add_argument("--lab", default=os.environ.get("LAB_NAME", "lab"))
    lab.add_argument("--port", type=int, default=DEFAULT_PORT)
    lab.add_argument("--version", action="append", default=None, help="stand-in releases (default: 0.32.15)")
    lab.add_argument("--root", type=Path, default=None, help="default: <lab cache>/depots/<lab>")
    url = sub.add_parser("url", help="print the depot URL of a lab")
    url.add_argument("--lab", default=os.environ.get("LAB_NAME", "lab"))
    url.add_argument("--port", type=int, default=DEFAULT_PORT)
    run = sub.add_parser("serve", help="serve a depot (for the duration of a command given after --)")
    run.add_argument("root", type=Path)
    run.add_argument("--url", required=True)
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.action == "url":
        print(lab_url(args.lab, args.port))
        return 0
    if args.action == "lab":
        address = lab_url(args.lab, args.port)
        root = args.root or Path(os.environ.get("LAB_HOME", "/var/cache/llm-lab")) / "depots" / args.lab
        sums = build_lab_depot(root, address, args.version or ["0.32.15"])
        os.environ.update(LAB_OLLAMA_DEPOT=address, **sha256_env(sums))
        return serve(root, address, command)
    if args.action == "serve":
        return serve(args.root, args.url, command)
    archive = write_release(args.root, args.version, args.url, args.runner_venv, args.compression)
    for spec in args.tag:
        tag, _, family = spec.partition("=")
        write_model(args.root, tag, args.model_dir, family or tag.split(":")[0])
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
