"""`st serve` on the tiny model, through the official OpenAI client and httpx over the loopback
(`make serve-test` builds the binaries and runs this): plain and streamed completions with an image
by data URL, text-only chat, /v1/scene equal to `st-run --json`, errors as the client raises them,
a client disconnecting mid-stream, a bounded load test, a soak (memory and descriptors flat), and
graceful shutdown on SIGTERM."""

import asyncio
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ST_BIN_DIR", ROOT / "target/debug"))
TINY = ROOT / "tests/fixtures/models/tiny"
IMAGES = ROOT / "tests/fixtures/images"
QUESTION = "Is the cat left of the table? (A) yes (B) no"
# Small free-text budgets keep the tiny model's answers short (its words are noise).
BOUNDS = ["--observe-tokens", "16", "--think-tokens", "16"]
ST = {"observe_tokens": 16, "think_tokens": 16}


class Server:
    """`st serve` on a free port; its stderr (the request log) kept in a file."""

    def __init__(self, tmp: Path, *args: str):
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        cmd = [str(BIN / "st"), "serve", "--model", str(TINY), "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = re.search(r"on http://([\d.]+:\d+)", self.log_path.read_text())
            if m:
                self.url = f"http://{m.group(1)}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"st serve exited: {self.log_path.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"st serve did not start: {self.log_path.read_text()}")

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def idle(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = httpx.get(f"{self.url}/health").json()
            if h["busy_workers"] == 0 and h["queue_depth"] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("the server stayed busy")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "--workers", "2", "--queue", "4")
    yield s
    s.stop()


def data_url(name: str) -> str:
    return "data:image/png;base64," + base64.b64encode((IMAGES / name).read_bytes()).decode()


def image_message(name: str, text: str) -> list:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(name)}},
        {"type": "text", "text": text},
    ]}]


def st_run(image: str, question: str) -> dict:
    out = subprocess.run(
        [str(BIN / "st-run"), str(IMAGES / image), question, "--model", str(TINY), "--json", "--threads", "1",
         "--max-new-tokens", "200", *BOUNDS],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def reference():
    return st_run("chelsea.png", QUESTION)


def test_a_completion_with_an_image_equals_st_run(server, reference):
    r = server.client().chat.completions.create(
        model="tiny", messages=image_message("chelsea.png", QUESTION), max_tokens=200, extra_body={"st": ST})
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == reference["raw"]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(reference["token_ids"])
    assert r.usage.prompt_tokens == reference["prompt_tokens"]
    typed = r.model_extra["st"]
    assert typed["valid"] and typed["scene"] == reference["scene"] and typed["answer"] == reference["answer"]


def test_a_streamed_completion_equals_the_whole_one(server, reference):
    chunks = list(server.client().chat.completions.create(
        model="tiny", messages=image_message("chelsea.png", QUESTION), max_tokens=200, extra_body={"st": ST},
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference["raw"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens == len(reference["token_ids"])


def test_text_only_chat_through_the_chat_template(server):
    c = server.client()
    r = c.chat.completions.create(
        model="tiny", max_tokens=12, seed=3, temperature=0.8,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        extra_body={"st": {"template": "chat"}})
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    again = c.chat.completions.create(
        model="tiny", max_tokens=12, seed=3, temperature=0.8,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        extra_body={"st": {"template": "chat"}})
    assert again.choices[0].message.content == r.choices[0].message.content  # seeded: the same
    assert [m.id for m in c.models.list().data] == ["tiny"]


def test_the_scene_endpoint_equals_st_run(server, reference):
    body = {"image": base64.b64encode((IMAGES / "chelsea.png").read_bytes()).decode(),
            "question": "Is the cat left of the table?", "options": ["yes", "no"], "max_new_tokens": 200, **ST}
    v = httpx.post(f"{server.url}/v1/scene", json=body, timeout=60).json()
    for field in ["raw", "token_ids", "answer", "scene", "valid", "prompt_tokens", "reasons", "stop"]:
        assert v[field] == reference[field], field
    del reference["image"]["path"]  # st-run names the file it read; an upload has none
    assert v["image"] == reference["image"]
    assert v["valid"] is True
    # Multipart, the same answer.
    files = {"image": ("chelsea.png", (IMAGES / "chelsea.png").read_bytes(), "image/png")}
    form = {"question": "Is the cat left of the table?", "options": ["yes", "no"], "max_new_tokens": "200",
            "observe_tokens": "16", "think_tokens": "16"}
    m = httpx.post(f"{server.url}/v1/scene", files=files, data=form, timeout=60).json()
    assert m["token_ids"] == reference["token_ids"]


def test_errors_are_what_the_client_expects(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=image_message("chelsea.png", "q"), max_tokens=10**6)
    assert e.value.param == "max_tokens" and "context" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=image_message("chelsea.png", "q"), n=2)
    assert e.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "no image"}])
    # A streamed request the runtime refuses is an error status, not a 200 stream.
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=image_message("chelsea.png", "q"), max_tokens=10**6,
                                  stream=True)
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{oops", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_the_api_key(tmp_path):
    s = Server(tmp_path, "--api-key", "sekrit")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert [m.id for m in s.client(api_key="sekrit").models.list().data] == ["tiny"]
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        s.stop()


def test_a_client_leaving_mid_stream_stops_its_generation(server):
    server.idle()
    before = server.metric("st_generated_tokens_total")
    body = {"model": "tiny", "max_tokens": 4000, "stream": True, "st": {"template": "chat"},
            "messages": [{"role": "user", "content": "Count to a million."}]}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
        # Leaving the block closes the connection.
    server.idle()
    generated = server.metric("st_generated_tokens_total") - before
    assert 0 < generated < 4000, generated
    assert "(stream) 499" in server.log_path.read_text()
    # And the server goes on answering.
    r = server.client().chat.completions.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}], extra_body={"st": {"template": "chat"}})
    assert r.usage.completion_tokens == 4


def test_a_client_leaving_before_the_answer_stops_its_generation(server):
    server.idle()
    before = server.metric("st_generated_tokens_total")
    body = {"model": "tiny", "max_tokens": 4000, "st": {"template": "chat"},
            "messages": [{"role": "user", "content": "Count to a million."}]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.05)
    server.idle()
    generated = server.metric("st_generated_tokens_total") - before
    assert generated < 4000, generated  # 0 when the worker had not taken it yet: skipped


def test_load_every_request_is_answered(server):
    """64 clients, 256 requests, 2 workers and a queue of 4: each request gets 200 or 503, none is lost
    or hangs, and the server's memory comes back to where it was."""
    server.idle()
    images = ["chelsea.png", "astronaut.png", "coffee_edge.png", "tiny_10x7.png", "thin_29x1000.png"]
    for name in images:  # warm-up: every frame once, so the cache is full before measuring
        httpx.post(f"{server.url}/v1/scene", json={"image": base64.b64encode((IMAGES / name).read_bytes()).decode(),
                   "question": "Where is it?", "options": ["left", "right"], **ST}, timeout=60)
    server.idle()
    rss_before = server.rss_bytes()
    payloads = {n: base64.b64encode((IMAGES / n).read_bytes()).decode() for n in images}

    async def client(i: int, h: httpx.AsyncClient, results: list):
        for j in range(4):
            name = images[(i + j) % len(images)]
            t = time.monotonic()
            if (i + j) % 2:
                r = await h.post("/v1/scene", json={"image": payloads[name], "question": f"Where is object {j}?",
                                                    "options": ["left", "right"], "max_new_tokens": 120, **ST})
            else:
                r = await h.post("/v1/chat/completions", json={
                    "model": "tiny", "max_tokens": 120, "st": ST,
                    "messages": image_message(name, f"Where is object {j}? (A) left (B) right")})
            results.append((r.status_code, time.monotonic() - t, r))

    async def run():
        results: list = []
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as h:
            await asyncio.wait_for(asyncio.gather(*(client(i, h, results) for i in range(64))), timeout=600)
        return results

    results = asyncio.run(run())
    assert len(results) == 256
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    ok = [(t, r) for s, t, r in results if s == 200]
    busy = [r for s, _, r in results if s == 503]
    assert ok and busy, (len(ok), len(busy))  # the queue is smaller than the load
    assert all(r.headers["retry-after"] == "1" for r in busy)
    for _, r in ok:
        v = r.json()
        typed = v.get("st", v)
        assert typed["valid"] is True
    server.idle()
    rss_after = server.rss_bytes()
    lat = sorted(t for t, _ in ok)
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    print(f"\nload: {len(ok)} answered, {len(busy)} refused (503); latency p50 {p50*1e3:.0f} ms, p99 {p99*1e3:.0f} ms; "
          f"RSS {rss_before/2**20:.0f} → {rss_after/2**20:.0f} MiB")
    # Freed buffers may stay with the allocator; 10 % (at least 32 MiB) bounds that, not a leak per request.
    assert rss_after <= rss_before + max(0.10 * rss_before, 32 * 2**20), (rss_before, rss_after)


def open_fds(pid: int) -> tuple[int, int]:
    """(files and pipes, sockets) open in process `pid`: the sockets come and go with connections, so a
    descriptor closed between listing the folder and reading its link is not counted."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    sockets = sum(link.startswith("socket:") for link in links)
    return len(links) - sockets, sockets


def test_soak_memory_and_descriptors_stay_flat(tmp_path):
    """ST_SERVE_SOAK requests (100 here; 1,000 recorded in docs/RELIABILITY.md), one client after
    another over five images, sampled with a fresh seed each: every scene valid; after a warm-up of a
    fifth of the run (at least two rounds of the images), the server's RSS grows < 2 % and its
    open files stay as they were (sockets: the listener and the client's connection)."""
    n = int(os.environ.get("ST_SERVE_SOAK", "100"))
    images = ["chelsea.png", "astronaut.png", "coffee_edge.png", "camera_gray.png", "tiny_10x7.png"]
    bodies = {i: base64.b64encode((IMAGES / i).read_bytes()).decode() for i in images}
    s = Server(tmp_path, "--workers", "1", "--frame-cache", "2")
    try:
        warm = min(max(n // 5, 2 * len(images)), n // 2)
        rss_warm = fds_warm = None
        invalid = []
        with httpx.Client(timeout=120) as h:
            for i in range(n):
                body = {"image": bodies[images[i % len(images)]], "question": "Where is the cat?",
                        "options": ["left", "right", "über dem Tisch"], "max_new_tokens": 200,
                        "temperature": 1.0, "seed": i, **ST}
                v = h.post(f"{s.url}/v1/scene", json=body).json()
                if not v.get("valid"):
                    invalid.append((i, v))
                if i + 1 == warm:
                    rss_warm, fds_warm = s.rss_bytes(), open_fds(s.proc.pid)
            # Measured as at the warm-up, with the client's connection still open: once it closes, the
            # server drops its socket at a moment of its own.
            rss_end, fds_end = s.rss_bytes(), open_fds(s.proc.pid)
        growth = (rss_end - rss_warm) / rss_warm * 100
        print(f"soak: {n} requests, {len(invalid)} invalid; RSS {rss_warm/2**20:.1f} -> {rss_end/2**20:.1f} MiB "
              f"({growth:+.2f} %) after {warm} warm-up; fds {fds_warm} -> {fds_end}")
        assert not invalid, invalid[:1]
        assert growth < 2.0, (rss_warm, rss_end)
        assert fds_end[0] == fds_warm[0], (fds_warm, fds_end)
        assert fds_end[1] <= fds_warm[1] + 1, (fds_warm, fds_end)  # the listener and one keep-alive connection
    finally:
        s.stop()


def _stream_then_sigterm(tmp_path, *args):
    s = Server(tmp_path, *args)
    body = {"model": "tiny", "max_tokens": 3000, "stream": True, "st": {"template": "chat"},
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Count to a million."}]}
    lines = []
    try:
        with httpx.Client(timeout=60) as h, h.stream("POST", f"{s.url}/v1/chat/completions", json=body) as r:
            it = r.iter_lines()
            lines.append(next(it))
            s.proc.send_signal(signal.SIGTERM)
            lines.extend(it)
        code = s.proc.wait(timeout=60)
    finally:
        s.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/health")
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [line for line in lines if line][-1] == "data: [DONE]"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return code, chunks[-1]["usage"]["completion_tokens"], finish


def test_sigterm_lets_a_running_stream_finish_then_exits_0(tmp_path):
    code, tokens, finish = _stream_then_sigterm(tmp_path, "--shutdown-timeout", "60")
    assert (code, tokens, finish) == (0, 3000, ["length"])  # ran to its token budget


def test_sigterm_past_the_grace_period_cancels_and_exits_0(tmp_path):
    code, tokens, finish = _stream_then_sigterm(tmp_path, "--shutdown-timeout", "0")
    assert (code, finish) == (0, ["stop"])
    assert tokens < 3000


def test_the_readme_example(server):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = block.replace("http://127.0.0.1:8080", server.url)
    out = subprocess.run([os.sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "<answer>" in out.stdout and "True" in out.stdout, out.stdout
