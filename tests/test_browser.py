"""The built book in a real browser (headless Chromium) and in JupyterLab."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served_book(smoke_book):
    html = smoke_book[0] / "_build" / "html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.browser
def test_book_renders_in_headless_chromium(served_book, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    shot = tmp_path / "index.png"
    proc = _chromium("--window-size=1280,900", f"--screenshot={shot}", served_book + "/index.html")
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    dom = _chromium("--dump-dom", served_book + "/book/inputs.html").stdout
    assert "<title>" in dom and "inputs" in dom.lower()
    assert "Cross-Modality Prompt Transfer" in dom
    assert "<img" in dom and ("data:image/png" in dom or "_images/" in dom)
    index_dom = _chromium("--dump-dom", served_book + "/index.html").stdout
    assert "pipeline.svg" in index_dom


@pytest.mark.slow
def test_jupyterlab_starts_and_runs_a_chapter_cell(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    env.pop("CMPT_RECORDS", None)
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--ip", "127.0.0.1", "--port", str(port),
                            "--no-browser", "--allow-root", f"--IdentityProvider.token={token}",
                            f"--ServerApp.root_dir={ROOT}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        status = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as resp:
                    status = json.load(resp)
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None and "started" in status
        with urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}", timeout=5) as resp:
            specs = json.load(resp)["kernelspecs"]
        assert "python3" in specs
        nb = json.loads((ROOT / "book" / "inputs.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        cell = "".join(code[0]["source"]) + "\nprofile = 'smoke'\n" + "".join(code[1]["source"])
        reply = _execute_in_kernel(base, token, cell + "\nprint('profile:', cfg.name)")
        assert reply["status"] == "ok", reply
        assert "profile: smoke" in reply["stdout"]
    finally:
        lab.terminate()
        lab.wait(timeout=30)


def _execute_in_kernel(base: str, token: str, code: str) -> dict:
    """Start a kernel through the server's REST API and run ``code`` over its websocket."""
    from tornado import ioloop, websocket

    req = urllib.request.Request(f"{base}/api/kernels?token={token}", data=json.dumps({"name": "python3"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        kernel_id = json.load(resp)["id"]

    async def run() -> dict:
        ws_url = base.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?token={token}"
        conn = await websocket.websocket_connect(ws_url)
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        stdout, status = [], None
        deadline = time.time() + 180
        while time.time() < deadline and status is None:
            raw = await conn.read_message()
            if raw is None:
                break
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                stdout.append(msg["content"]["text"])
            elif msg["msg_type"] == "execute_reply":
                status = msg["content"]["status"]
        conn.close()
        return {"status": status, "stdout": "".join(stdout)}

    return ioloop.IOLoop.current().run_sync(run, timeout=240)
