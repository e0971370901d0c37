"""A test-only stand-in for the Ollama server: `ollama serve` and `ollama --version`.

It is NOT Ollama (no Ollama binary can be had on a CI machine: docs/test-engines.md, section 4).
It implements the slice of Ollama's REST API the toolkit touches, with Ollama's response shapes,
NDJSON pull statuses and error texts, and it keeps models the way Ollama does:
manifests/registry.ollama.ai/<namespace>/<model>/<tag> and blobs/sha256-<hex> under OLLAMA_MODELS,
downloaded from a registry (the lab's depot) with their sha256 checked, `-partial` files while
downloading. Every generated token comes from a real engine: like Ollama, which starts a runner
process per loaded model, it starts the CPU build of vLLM on the pulled model files.

What cannot be real here: the Ollama binary itself, GGUF models and GPU residency. A host whose
nvidia-smi lists a GPU (a simulated one in the lab) reports the model in VRAM in /api/ps, as
Ollama would; CUDA_VISIBLE_DEVICES=-1 or a driver older than 550 report it on the CPU.

Configuration baked into the release archive (lib/ollama/standin.json): version, registry URL,
runner venv, arguments and environment, and a fault injector for the tests: `"fault": "cannot-serve"` makes
a release whose `--version` answers and whose `serve` fails at once, as a release that cannot run on the
host does (the role's trial of a new release must switch back). Settings from the environment, as Ollama reads them:
OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_KEEP_ALIVE, OLLAMA_NUM_PARALLEL, OLLAMA_LOAD_TIMEOUT,
OLLAMA_MAX_LOADED_MODELS. Standard library only: it runs on any host with Python 3.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(os.path.realpath(__file__)).parent
CONFIG = json.loads((HERE / "standin.json").read_text(encoding="utf-8"))
VERSION = CONFIG["version"]
FAULT = CONFIG.get("fault", "")
DEFAULT_HOST = "registry.ollama.ai"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME = re.compile(r"^(?:(?P<host>[\w.-]+(?::\d+)?)/)?(?:(?P<ns>[\w.-]+)/)?(?P<model>[\w.-]+)(?::(?P<tag>[\w.-]+))?$")
MODEL_MEDIA = "application/vnd.ollama.image.model"
CHUNK = 1 << 20


def log(message: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4]
    print(f"time={stamp} level=INFO source=standin msg={json.dumps(message)}", file=sys.stderr, flush=True)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat()


def parse_duration(text: str | None, default: float) -> float:
    """Ollama's durations: "5m", "30s", "1h30m", a number of seconds; negative means forever."""
    if text is None or text == "":
        return default
    text = str(text).strip()
    with contextlib.suppress(ValueError):
        value = float(text)
        return float("inf") if value < 0 else value
    total, matched = 0.0, False
    for number, unit in re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if not matched:
        return default
    return float("inf") if total < 0 else total


def listen_address() -> tuple[str, int]:
    raw = os.environ.get("OLLAMA_HOST", "") or "127.0.0.1:11434"
    raw = re.sub(r"^https?://", "", raw).rstrip("/")
    host, _, port = raw.rpartition(":") if ":" in raw else (raw, "", "11434")
    return host.strip("[]") or "127.0.0.1", int(port or 11434)


class ModelName:
    def __init__(self, text: str) -> None:
        match = NAME.match(text or "")
        if not match:
            raise ValueError(f"invalid model name {text!r}")
        self.host = match["host"] or DEFAULT_HOST
        self.namespace = match["ns"] or "library"
        self.model = match["model"]
        self.tag = match["tag"] or "latest"
        if not match["ns"] and match["host"] and "." not in match["host"] and ":" not in match["host"]:
            self.host, self.namespace = DEFAULT_HOST, match["host"]

    @property
    def short(self) -> str:
        if self.host == DEFAULT_HOST and self.namespace == "library":
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


class Store:
    """Ollama's model directory: manifests by name, blobs by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests / name.host / name.namespace / name.model / name.tag

    def blob_path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise ValueError(f"invalid digest format {digest!r}")
        return self.blobs / digest.replace(":", "-")

    def read(self, name: ModelName) -> tuple[dict, str] | None:
        path = self.manifest_path(name)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()

    def names(self) -> list[ModelName]:
        found = []
        for path in sorted(self.manifests.glob("*/*/*/*")):
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            found.append(ModelName(f"{host}/{namespace}/{model}:{tag}"))
        return found

    def referenced(self) -> set[str]:
        digests = set()
        for name in self.names():
            manifest, _ = self.read(name)
            digests.update(layer["digest"] for layer in [manifest["config"], *manifest["layers"]])
        return digests

    def prune(self) -> None:
        keep = {digest.replace(":", "-") for digest in self.referenced()}
        for blob in self.blobs.iterdir():
            if blob.name not in keep and "-partial" not in blob.name:
                blob.unlink()

    def config(self, manifest: dict) -> dict:
        return json.loads(self.blob_path(manifest["config"]["digest"]).read_text(encoding="utf-8"))

    def describe(self, name: ModelName) -> dict | None:
        found = self.read(name)
        if not found:
            return None
        manifest, digest = found
        config = self.config(manifest)
        path = self.manifest_path(name)
        return {
            "name": name.short,
            "model": name.short,
            "modified_at": datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).astimezone().isoformat(),
            "size": sum(layer["size"] for layer in manifest["layers"]),
            "digest": digest,
            "details": {
                "parent_model": "",
                "format": config.get("model_format", ""),
                "family": config.get("model_family", ""),
                "families": config.get("model_families", []),
                "parameter_size": config.get("model_type", ""),
                "quantization_level": config.get("file_type", ""),
            },
        }


class Runner:
    """The real engine serving one loaded model: vLLM's CPU build on the model's files."""

    def __init__(self, store: Store, name: ModelName, manifest: dict, digest: str) -> None:
        self.name = name
        self.digest = digest
        self.size = sum(layer["size"] for layer in manifest["layers"])
        self.workdir = Path(tempfile.mkdtemp(prefix="ollama-standin-runner-"))
        for layer in manifest["layers"]:
            title = layer.get("annotations", {}).get("org.opencontainers.image.title")
            if layer["mediaType"] == MODEL_MEDIA:
                title = title or "model.safetensors"
            if title:
                (self.workdir / title).symlink_to(store.blob_path(layer["digest"]))
        self.served = digest[:12]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        runner = CONFIG["runner"]
        command = [
            str(Path(runner["venv"]) / "bin" / "vllm"),
            "serve",
            str(self.workdir),
            "--served-model-name",
            self.served,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-num-seqs",
            str(max(1, int(os.environ.get("OLLAMA_NUM_PARALLEL") or 1))),
            *runner.get("args", []),
        ]
        cache = Path(tempfile.gettempdir()) / "ollama-standin-cache"
        cache.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, **runner.get("env", {})}
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(HERE), env.get("LD_LIBRARY_PATH", "")]))
        env.update(HOME=str(cache), XDG_CACHE_HOME=str(cache), VLLM_CACHE_ROOT=str(cache / "vllm"))
        env.update(NUMBA_CACHE_DIR=str(cache / "numba"), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
        # vLLM's CPU build pins its engine's threads to cores. The toolkit's vLLM on a lab CPU host
        # takes the first core ("auto"); the runner takes the last, or a vLLM start beside a runner
        # under load (the failover drill) waits for that one core: 117 s instead of 28 s.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(max(os.sched_getaffinity(0))))
        log(f"starting llama runner (stand-in: vLLM CPU) for {name.short} on port {self.port}")
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True
        )
        self.gpu = gpu_residency()
        self.expires = float("inf")
        self.lock = threading.Lock()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama runner process has terminated: exit status {self.process.returncode}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    log(f"llama runner started for {self.name.short}")
                    return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("timed out waiting for llama runner to start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for link in self.workdir.iterdir():
            link.unlink()
        self.workdir.rmdir()
        log(f"runner for {self.name.short} stopped")

    def open(self, path: str, body: dict) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        connection.request(
            "POST", path, json.dumps({**body, "model": self.served}), {"Content-Type": "application/json"}
        )
        return connection.getresponse()


def gpu_residency() -> bool:
    """Where Ollama would put the model: a GPU that nvidia-smi lists, with a driver of 550 or newer."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() == "-1":
        return False
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    drivers = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return result.returncode == 0 and bool(drivers) and all(int(d.split(".")[0]) >= 550 for d in drivers)


class Server:
    def __init__(self) -> None:
        default_models = Path(os.environ.get("HOME", "/root")) / ".ollama" / "models"
        self.store = Store(Path(os.environ.get("OLLAMA_MODELS") or default_models))
        self.keep_alive = parse_duration(os.environ.get("OLLAMA_KEEP_ALIVE"), 300)
        self.load_timeout = parse_duration(os.environ.get("OLLAMA_LOAD_TIMEOUT"), 300)
        self.max_loaded = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 1)
        self.runners: dict[str, Runner] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.reap, daemon=True).start()

    def reap(self) -> None:
        while True:
            time.sleep(1)
            with self.lock:
                for digest, runner in list(self.runners.items()):
                    if runner.expires <= time.time() and not runner.lock.locked():
                        del self.runners[digest]
                        runner.stop()

    def shutdown(self) -> None:
        with self.lock:
            for runner in self.runners.values():
                runner.stop()
            self.runners.clear()

    def runner(self, name: ModelName, keep_alive: str | float | None) -> Runner:
        found = self.store.read(name)
        if not found:
            raise LookupError(name)
        manifest, _ = found
        model_layer = next((layer for layer in manifest["layers"] if layer["mediaType"] == MODEL_MEDIA), None)
        if model_layer is None:
            raise ValueError(f"{name.short} does not support generate")
        key = model_layer["digest"]
        with self.lock:
            runner = self.runners.get(key)
            if runner is None:
                while len(self.runners) >= self.max_loaded:
                    oldest = min(self.runners, key=lambda digest: self.runners[digest].expires)
                    self.runners.pop(oldest).stop()
                runner = Runner(self.store, name, manifest, key.split(":", 1)[1])
                try:
                    runner.wait_ready(self.load_timeout)
                except RuntimeError:
                    runner.stop()
                    raise
                self.runners[key] = runner
            seconds = parse_duration(None if keep_alive is None else str(keep_alive), self.keep_alive)
            runner.expires = time.time() + seconds
        return runner


SERVER: Server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin"

    def log_message(self, format: str, *args: object) -> None:
        log(f"[GIN] {self.command} {self.path} {args[1] if len(args) > 1 else ''}")

    # -- plumbing -----------------------------------------------------------
    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("request body must be a JSON object")
        return data

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def error(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def start_stream(self, content_type: str = "application/x-ndjson") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def line(self, payload: dict) -> None:
        self.chunk(json.dumps(payload).encode() + b"\n")

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def model_name(self, data: dict) -> ModelName:
        return ModelName(str(data.get("model") or data.get("name") or ""))

    # -- routes -------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.send_empty(200 if self.path == "/" else 404)

    def do_GET(self) -> None:
        if self.path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self.send_json(200, {"models": [SERVER.store.describe(name) for name in SERVER.store.names()]})
        elif self.path == "/api/ps":
            self.send_json(200, {"models": self.loaded()})
        elif self.path == "/v1/models":
            created = int(time.time())
            data = [
                {"id": n.short, "object": "model", "created": created, "owned_by": n.namespace}
                for n in SERVER.store.names()
            ]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.error(404, "404 page not found")

    def do_DELETE(self) -> None:
        if self.path != "/api/delete":
            self.error(404, "404 page not found")
            return
        try:
            name = self.model_name(self.body())
        except ValueError as exc:
            self.error(400, str(exc))
            return
        path = SERVER.store.manifest_path(name)
        if not path.is_file():
            self.error(404, f"model '{name.short}' not found")
            return
        path.unlink()
        SERVER.store.prune()
        self.send_empty(200)

    def do_POST(self) -> None:
        routes = {
            "/api/pull": self.pull,
            "/api/show": self.show,
            "/api/copy": self.copy,
            "/api/generate": self.generate,
            "/api/chat": self.chat,
            "/v1/chat/completions": self.openai,
            "/v1/completions": self.openai,
        }
        route = routes.get(self.path)
        if route is None:
            self.error(404, "404 page not found")
            return
        try:
            data = self.body()
        except ValueError as exc:
            self.error(400, str(exc))
            return
        try:
            route(data)
        except (BrokenPipeError, ConnectionResetError):
            log(f"client went away during {self.path}")

    def loaded(self) -> list[dict]:
        models = []
        for runner in list(SERVER.runners.values()):
            described = SERVER.store.describe(runner.name) or {}
            expires = runner.expires if runner.expires != float("inf") else time.time() + 10 * 365 * 86400
            models.append(
                {
                    "name": runner.name.short,
                    "model": runner.name.short,
                    "size": runner.size,
                    "digest": described.get("digest", ""),
                    "details": described.get("details", {}),
                    "expires_at": datetime.datetime.fromtimestamp(expires, datetime.UTC).astimezone().isoformat(),
                    "size_vram": runner.size if runner.gpu else 0,
                    "context_length": 512,
                }
            )
        return models

    def show(self, data: dict) -> None:
        name = self.model_name(data)
        described = SERVER.store.describe(name)
        if not described:
            self.error(404, f"model '{name.short}' not found")
            return
        self.send_json(
            200,
            {
                "license": "",
                "modelfile": f"# Modelfile generated by the Ollama stand-in\nFROM {name.short}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": described["details"],
                "model_info": {},
                "capabilities": ["completion"],
                "modified_at": described["modified_at"],
            },
        )

    def copy(self, data: dict) -> None:
        try:
            source, destination = ModelName(str(data.get("source", ""))), ModelName(str(data.get("destination", "")))
        except ValueError as exc:
            self.error(400, str(exc))
            return
        found = SERVER.store.manifest_path(source)
        if not found.is_file():
            self.error(404, f"model '{source.short}' not found")
            return
        target = SERVER.store.manifest_path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(found.read_bytes())
        self.send_empty(200)

    # -- pull ---------------------------------------------------------------
    def pull(self, data: dict) -> None:
        stream = data.get("stream", True) is not False
        try:
            name = self.model_name(data)
        except ValueError as exc:
            self.error(400, str(exc))
            return
        if stream:
            self.start_stream()
        emit = self.line if stream else (lambda _payload: None)
        try:
            self.pull_into_store(name, emit)
        except PullError as exc:
            if stream:
                self.line({"error": str(exc)})
                self.end_stream()
            else:
                self.error(500, str(exc))
            return
        if stream:
            self.line({"status": "success"})
            self.end_stream()
        else:
            self.send_json(200, {"status": "success"})

    def pull_into_store(self, name: ModelName, emit) -> None:
        store = SERVER.store
        base = f"{CONFIG['registry'].rstrip('/')}/v2/{name.namespace}/{name.model}"
        emit({"status": "pulling manifest"})
        try:
            with urllib.request.urlopen(f"{base}/manifests/{name.tag}", timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise PullError("pull model manifest: file does not exist") from exc
            raise PullError(f"pull model manifest: {exc.code} {exc.reason}") from exc
        except OSError as exc:
            raise PullError(f"pull model manifest: {exc}") from exc
        manifest = json.loads(raw)
        layers = [manifest["config"], *manifest["layers"]]
        for layer in layers:
            if not DIGEST.match(str(layer.get("digest", ""))):
                raise PullError(f"invalid digest format: {layer.get('digest')!r}")
        for layer in layers:
            self.pull_blob(base, layer, emit)
        emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        previous = store.read(name)
        path = store.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        if previous:
            old = {layer["digest"] for layer in [previous[0]["config"], *previous[0]["layers"]]}
            if old - store.referenced():
                emit({"status": "removing unused layers"})
                store.prune()

    def pull_blob(self, base: str, layer: dict, emit) -> None:
        digest, total = layer["digest"], int(layer["size"])
        status = f"pulling {digest.split(':', 1)[1][:12]}"
        target = SERVER.store.blob_path(digest)
        if target.is_file():
            emit({"status": status, "digest": digest, "total": total, "completed": total})
            return
        partial = target.with_name(target.name + "-partial")
        emit({"status": status, "digest": digest, "total": total})
        hasher, completed = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(f"{base}/blobs/{digest}", timeout=60) as response, partial.open("wb") as out:  # noqa: S310
                while block := response.read1(CHUNK):  # what has arrived, as Ollama reports progress as it goes
                    try:
                        out.write(block)
                        out.flush()
                    except OSError as exc:
                        # Ollama (server/download.go) gives up at once when the disk is full, without a
                        # retry, and streams Go's error: "write <blob>-partial: no space left on device".
                        raise PullError(f"write {partial}: {(exc.strerror or str(exc)).lower()}") from exc
                    hasher.update(block)
                    completed += len(block)
                    emit({"status": status, "digest": digest, "total": total, "completed": completed})
        except OSError as exc:
            raise PullError(f"max retries exceeded: {exc}") from exc
        if f"sha256:{hasher.hexdigest()}" != digest:
            partial.unlink()
            raise PullError(
                f"digest mismatch, file must be downloaded again: want {digest}, got sha256:{hasher.hexdigest()}"
            )
        partial.rename(target)

    # -- inference ----------------------------------------------------------
    def runner_or_error(self, data: dict) -> tuple[ModelName, Runner] | None:
        try:
            name = self.model_name(data)
        except ValueError as exc:
            self.error(400, str(exc))
            return None
        try:
            return name, SERVER.runner(name, data.get("keep_alive"))
        except LookupError:
            self.error(404, f"model '{name.short}' not found")
        except (ValueError, RuntimeError) as exc:
            self.error(500, str(exc))
        return None

    @staticmethod
    def sampling(data: dict) -> dict:
        options = data.get("options") or {}
        body = {"temperature": options.get("temperature", 0.8)}
        for ollama_key, openai_key in [("top_p", "top_p"), ("top_k", "top_k"), ("seed", "seed"), ("stop", "stop")]:
            if ollama_key in options:
                body[openai_key] = options[ollama_key]
        if options.get("num_predict", -1) not in (-1, -2, None):
            body["max_tokens"] = options["num_predict"]
        if data.get("format") == "json":
            body["response_format"] = {"type": "json_object"}
        return body

    def generate(self, data: dict) -> None:
        found = self.runner_or_error(data)
        if not found:
            return
        name, _ = found
        if not data.get("prompt") and not data.get("images"):
            self.send_json(
                200,
                {"model": name.short, "created_at": now_rfc3339(), "response": "", "done": True, "done_reason": "load"},
            )
            return
        messages = [{"role": "system", "content": data["system"]}] if data.get("system") else []
        messages.append({"role": "user", "content": data["prompt"]})
        self.infer(found, data, messages, lambda text: {"response": text})

    def chat(self, data: dict) -> None:
        found = self.runner_or_error(data)
        if not found:
            return
        name, _ = found
        messages = data.get("messages") or []
        if not messages:
            self.send_json(
                200,
                {
                    "model": name.short,
                    "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                },
            )
            return
        self.infer(found, data, messages, lambda text: {"message": {"role": "assistant", "content": text}})

    def infer(self, found: tuple[ModelName, Runner], data: dict, messages: list, shape) -> None:
        name, runner = found
        stream = data.get("stream", True) is not False
        body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}, **self.sampling(data)}
        started = time.monotonic_ns()
        first = None
        pieces: list[str] = []
        usage: dict = {}
        finish = "stop"
        with runner.lock:
            response = runner.open("/v1/chat/completions", body)
            if response.status != 200:
                detail = response.read().decode(errors="replace")
                self.error(500, f"runner error {response.status}: {detail[:300]}")
                return
            if stream:
                self.start_stream()
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        first = first or time.monotonic_ns()
                        pieces.append(text)
                        if stream:
                            self.line({"model": name.short, "created_at": now_rfc3339(), **shape(text), "done": False})
        ended = time.monotonic_ns()
        first = first or ended
        final = {
            "model": name.short,
            "created_at": now_rfc3339(),
            **shape("" if stream else "".join(pieces)),
            "done": True,
            "done_reason": "length" if finish == "length" else "stop",
            "total_duration": ended - started,
            "load_duration": 0,
            "prompt_eval_count": usage.get("prompt_tokens", 0),
            "prompt_eval_duration": first - started,
            "eval_count": usage.get("completion_tokens", len(pieces)),
            "eval_duration": ended - first,
        }
        if stream:
            self.line(final)
            self.end_stream()
        else:
            self.send_json(200, final)

    def openai(self, data: dict) -> None:
        try:
            name = ModelName(str(data.get("model", "")))
        except ValueError as exc:
            self.send_json(
                400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}}
            )
            return
        try:
            runner = SERVER.runner(name, data.get("keep_alive"))
        except LookupError:
            message = f"model '{name.short}' not found"
            self.send_json(404, {"error": {"message": message, "type": "api_error", "param": None, "code": None}})
            return
        except (ValueError, RuntimeError) as exc:
            self.send_json(500, {"error": {"message": str(exc), "type": "api_error", "param": None, "code": None}})
            return
        with runner.lock:
            response = runner.open(self.path, data)
            if not data.get("stream"):
                payload = json.loads(response.read() or b"{}")
                if isinstance(payload, dict) and "model" in payload:
                    payload["model"] = name.short
                self.send_json(response.status, payload)
                return
            self.start_stream("text/event-stream")
            for raw in response:
                line = raw.decode()
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    event["model"] = name.short
                    line = "data: " + json.dumps(event) + "\n"
                self.chunk(line.encode())
            self.end_stream()


class PullError(Exception):
    """A pull failed; the message is the one Ollama gives."""


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def version_command() -> int:
    host, port = listen_address()
    try:
        connection = http.client.HTTPConnection(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port, timeout=2)  # noqa: S104
        connection.request("GET", "/api/version")
        server_version = json.loads(connection.getresponse().read())["version"]
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        print("Warning: could not connect to a running Ollama instance", file=sys.stderr)
        print(f"Warning: client version is {VERSION}", file=sys.stderr)
        return 0
    print(f"ollama version is {server_version}")
    if server_version != VERSION:
        print(f"Warning: client version is {VERSION}", file=sys.stderr)
    return 0


def serve() -> int:
    global SERVER  # noqa: PLW0603 - one server per process
    if FAULT == "cannot-serve":
        print(f"Error: release {VERSION} cannot start its server (stand-in fault injector)", file=sys.stderr)
        return 1
    host, port = listen_address()
    SERVER = Server()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ThreadingServer.address_family = family
    try:
        httpd = ThreadingServer((host, port), Handler)
    except OSError as exc:
        print(f"Error: listen tcp {host}:{port}: bind: {exc.strerror.lower()}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"Listening on {host}:{port} (version {VERSION}, stand-in)")
    log(f"server config OLLAMA_MODELS:{SERVER.store.root} OLLAMA_KEEP_ALIVE:{SERVER.keep_alive}")
    try:
        httpd.serve_forever()
    finally:
        SERVER.shutdown()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] in (["-v"], ["--version"], ["version"]):
        return version_command()
    if argv[:1] == ["serve"]:
        return serve()
    print(
        f"Error: the Ollama stand-in implements `serve` and `--version` only, not {' '.join(argv)!r}", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
