#!/usr/bin/env python3
"""`make attack`: the admin API under attack.

Starts `kasm dev` (embedded Kafka, the four task-app handlers, the admin API on a random
loopback port, a random KASM_ADMIN_TOKEN), then:

1. schemathesis against /openapi.json with the token: every operation, generated and
   mutated requests; the checks that gate are `not_a_server_error` (no 5xx) and
   `ignored_auth` (schemathesis repeats requests without or with a wrong token and fails
   if one succeeds);
2. a sweep of its own: every route and method of the document, with no token, an empty one,
   a wrong one, a prefix of the right one, the right one in another scheme: each must answer
   401, and no unauthenticated request may succeed;
3. oversized and malformed uploads (a 100 MiB component with and without Content-Length,
   concurrently; garbage, truncated and padded components; oversized and broken JSON bodies),
   each must be refused with a 4xx, while the host's peak resident memory (VmHWM in
   /proc/<pid>/status) is recorded before and after.

Writes target/attack/report.json and exits non-zero on any 5xx, any unauthenticated success,
any upload that is not refused, or a host that died.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "attack"
KASM = ROOT / "target" / "debug" / "kasm"
SCHEMATHESIS = OUT / "venv" / "bin" / "schemathesis"
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"attack: {msg}", flush=True)


class Host:
    """`kasm dev` as a child process; its output goes to target/attack/host.log."""

    def __init__(self, token: str) -> None:
        env = dict(os.environ, KASM_ADMIN_TOKEN=token, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.logfile = open(OUT / "host.log", "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [str(KASM), "dev", "--admin", "127.0.0.1:0", "--rate", "2",
             "--handlers-dir", str(ROOT / "handlers" / "dist")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.addr = ""
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.logfile.write(line)
                self.logfile.flush()
                m = re.search(r"admin at http://([0-9.:]+)", line)
                if m and not found.is_set():
                    self.addr = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(120):
            self.stop()
            raise SystemExit(f"attack: kasm dev did not print its admin address (see {OUT / 'host.log'})")
        host, port = self.addr.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory(self) -> dict[str, int]:
        """VmHWM (peak) and VmRSS (now) in KiB."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status", encoding="utf-8") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0])
        return out

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def request(host: Host, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host.host, host.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def stream_upload(host: Host, path: str, total: int, token: str, chunked: bool,
                  method: str = "PUT", body: bytes | None = None) -> tuple[int | None, str]:
    """Send `body`, or `total` bytes of zeros, in 1 MiB pieces; the server may answer (and
    close) early, which is what a refusal should do."""
    if body is not None:
        total = len(body)
    s = socket.create_connection((host.host, host.port), timeout=120)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host.addr}\r\nAuthorization: Bearer {token}\r\n" \
           f"Content-Type: {'application/wasm' if method == 'PUT' else 'application/json'}\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n"
    piece = b"\0" * MIB
    sent = 0
    try:
        s.sendall((head + "\r\n").encode())
        while sent < total:
            data = body[sent:sent + MIB] if body is not None else piece[: min(MIB, total - sent)]
            s.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent += len(data)
        if chunked:
            s.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: what we want
    try:
        s.settimeout(120)
        answer = s.recv(4096).decode(errors="replace")
    except OSError as e:
        answer = f"(no answer: {e})"
    finally:
        s.close()
    m = re.match(r"HTTP/1\.[01] (\d{3})", answer)
    return (int(m.group(1)) if m else None), f"sent {sent >> 20} MiB"


def run_schemathesis(host: Host, token: str, max_examples: int, report: dict) -> None:
    base = f"http://{host.addr}"
    cmd = [str(SCHEMATHESIS), "run", f"{base}/openapi.json",
           "-H", f"Authorization: Bearer {token}",
           "--checks", "not_a_server_error,ignored_auth",
           "--max-examples", str(max_examples),
           "--workers", "1", "--request-timeout", "30", "--seed", "1",
           "--suppress-health-check", "all",
           "--report", "junit", "--report-dir", str(OUT / "schemathesis")]
    shown = [c if token not in c else c.replace(token, "$KASM_ADMIN_TOKEN") for c in cmd]
    log("schemathesis: " + " ".join(shown))
    with open(OUT / "schemathesis.log", "w", encoding="utf-8") as out:
        rc = subprocess.call(cmd, cwd=OUT, stdout=out, stderr=subprocess.STDOUT)
    text = (OUT / "schemathesis.log").read_text(encoding="utf-8", errors="replace")
    # A check that failed (a 5xx, an ignored token) is a JUnit <failure>; an <error> is
    # schemathesis itself failing to generate a case (reported, not a finding about kasm).
    failures, errors = [], []
    for junit in sorted((OUT / "schemathesis").glob("junit-*.xml"))[-1:]:
        import xml.etree.ElementTree as ET
        for case in ET.parse(junit).getroot().iter("testcase"):
            for f in case.findall("failure"):
                failures.append(f"{case.get('name')}: {(f.get('message') or f.text or '')[:300]}")
            for e in case.findall("error"):
                errors.append(f"{case.get('name')}: {(e.get('message') or e.text or '')[:200]}")
    m = re.search(r"Test cases:\s*\n\s*(.*)", text)
    cases = m.group(1).strip() if m else "?"
    log(f"schemathesis: exit {rc}; test cases: {cases}; check failures: {len(failures)}; "
        f"tool errors: {len(errors)}")
    for f in failures:
        log(f"  failure: {f}")
    for e in errors:
        log(f"  schemathesis error (not a finding): {e[:160]}")
    report["schemathesis"] = {"command": " ".join(shown), "exit": rc, "test_cases": cases,
                              "failures": failures, "errors": errors}


def unauthenticated_sweep(host: Host, token: str, doc: dict, report: dict) -> list[str]:
    problems, other = [], []
    fill = {"name": "audit", "topic": "task-events"}
    wrong = [None, "", "Bearer ", "Bearer wrong", f"Bearer {token[:-1]}", f"Bearer {token}x",
             f"bearer {token}", f"Basic {token}", token, f"Bearer  {token}"]
    count = 0
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            if op.get("security") == []:
                continue  # declared open: /healthz, /readyz, /metrics
            url = re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), "x"), path)
            body = b'{"all": true}' if method != "get" else None
            headers = {"Content-Type": "application/json"}
            if path == "/ws":
                # Its own credential: the channel token (an HMAC), never the admin token.
                url += f"?channel=user:u1&token={token}"
                headers.update({"Connection": "Upgrade", "Upgrade": "websocket",
                                "Sec-WebSocket-Version": "13",
                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            for auth in wrong:
                h = dict(headers)
                if auth is not None:
                    h["Authorization"] = auth
                status, _ = request(host, method.upper(), url, body, h)
                count += 1
                what = f"{method.upper()} {url.split('?')[0]} with Authorization={auth!r:.24}: {status}"
                if status < 300 or status == 101:
                    problems.append("unauthenticated success: " + what)
                elif status != 401:
                    other.append(what)
    report["unauthenticated"] = {"requests": count, "successes": problems, "refused_not_401": other}
    log(f"unauthenticated sweep: {count} requests, {len(problems)} successes, "
        f"{len(other)} refusals other than 401")
    return problems + [f"refused with a status other than 401: {o}" for o in other]


def uploads(host: Host, token: str, report: dict) -> list[str]:
    problems = []
    auth = {"Authorization": f"Bearer {token}"}
    component = "/v1/handlers/audit/component"
    results = []
    mem0 = host.memory()
    log(f"before the uploads: VmHWM {mem0['VmHWM'] >> 10} MiB  VmRSS {mem0['VmRSS'] >> 10} MiB")

    def check(what: str, status: int | None, ok=lambda s: s is not None and 400 <= s < 500) -> None:
        mem = host.memory()
        results.append({"case": what, "status": status, "VmHWM_kib": mem["VmHWM"], "VmRSS_kib": mem["VmRSS"]})
        log(f"{what}: {status}  VmHWM {mem['VmHWM'] >> 10} MiB  VmRSS {mem['VmRSS'] >> 10} MiB")
        if not ok(status):
            problems.append(f"{what}: answered {status}")

    # Oversized: 100 MiB with a Content-Length, then chunked (no length), then 4 at once.
    check("PUT component 100 MiB, Content-Length", stream_upload(host, component, 100 * MIB, token, False)[0])
    check("PUT component 100 MiB, chunked", stream_upload(host, component, 100 * MIB, token, True)[0])
    threads, statuses = [], []
    for i in range(4):
        t = threading.Thread(target=lambda c=(i % 2 == 0): statuses.append(
            stream_upload(host, component, 100 * MIB, token, c)[0]))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    check("PUT component 100 MiB x4 concurrently", max(statuses, key=lambda s: s or 999),
          ok=lambda s: all(x is not None and 400 <= x < 500 for x in statuses))
    check("POST events 100 MiB", stream_upload(host, "/v1/topics/task-events/events", 100 * MIB, token, False, "POST")[0])
    check("POST events 100 MiB, chunked", stream_upload(host, "/v1/topics/task-events/events", 100 * MIB, token, True, "POST")[0])
    check("POST replay 100 MiB", stream_upload(host, "/v1/handlers/audit/dlq/replay", 100 * MIB, token, False, "POST")[0])

    # Malformed components: refused (422/400), the active version keeps serving.
    wasm = (ROOT / "handlers" / "dist" / "audit.wasm").read_bytes()
    core_module = b"\0asm\x01\0\0\0"
    cases = {
        "garbage 1 MiB": os.urandom(MIB),
        "garbage 30 MiB": os.urandom(30 * MIB),
        "truncated component": wasm[: len(wasm) // 2],
        "component + 1 MiB trailing garbage": wasm + os.urandom(MIB),
        "core module": core_module,
        "wasm magic, huge section length": b"\0asm\x0d\0\x01\0" + b"\x01\xff\xff\xff\xff\x0f" + b"\0" * 64,
        "component header only": b"\0asm\x0d\0\x01\0",
        "another handler's component (ungranted imports?)": (ROOT / "handlers" / "dist" / "hostile.wasm").read_bytes()
        if (ROOT / "handlers" / "dist" / "hostile.wasm").exists() else b"\0asm",
    }
    for what, body in cases.items():
        status, answer = request(host, "PUT", component, body, {**auth, "Content-Type": "application/wasm"}, timeout=300)
        check(f"PUT component: {what}", status,
              ok=(lambda s: s is not None and (400 <= s < 500 or s == 200)) if "another" in what else
              (lambda s: s is not None and 400 <= s < 500))
    # Malformed JSON bodies.
    for what, path, body in [
        ("events: not JSON", "/v1/topics/task-events/events", b"{oops"),
        ("events: deep nesting", "/v1/topics/task-events/events", b'{"event":' + b"[" * 100000 + b"]" * 100000 + b"}"),
        ("events: bad topic", "/v1/topics/..%2F/events", b'{"event":{}}'),
        ("replay: unknown field", "/v1/handlers/audit/dlq/replay", b'{"al": true}'),
        ("replay: both", "/v1/handlers/audit/dlq/replay", b'{"all": true, "records": [{"partition": 0, "offset": 0}]}'),
        ("replay: huge records list", "/v1/handlers/audit/dlq/replay", b'{"records": [' + b",".join([b'{"partition":0,"offset":1}'] * 200000) + b"]}"),
        ("dlq: bad cursor", "/v1/handlers/audit/dlq?from=0:-1", None),
    ]:
        method = "GET" if body is None else "POST"
        if body is not None and len(body) > MIB:
            status = stream_upload(host, path, 0, token, False, method, body)[0]
        else:
            status, _ = request(host, method, path, body, {**auth, "Content-Type": "application/json"})
        check(f"{method} {what}", status)
    report["uploads"] = {"before": mem0, "cases": results, "problems": problems}
    return problems


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    if not KASM.exists():
        raise SystemExit(f"attack: {KASM} is missing (make build)")
    max_examples = int(os.environ.get("ATTACK_MAX_EXAMPLES", "100"))
    token = secrets.token_hex(24)
    host = Host(token)
    log(f"kasm dev (pid {host.proc.pid}) admin at http://{host.addr}")
    report: dict = {"admin": host.addr, "memory_at_start": host.memory()}
    problems: list[str] = []
    try:
        status, body = request(host, "GET", "/openapi.json", headers={"Authorization": f"Bearer {token}"})
        if status != 200:
            raise SystemExit(f"attack: GET /openapi.json answered {status}")
        doc = json.loads(body)
        (OUT / "openapi.json").write_bytes(body)
        run_schemathesis(host, token, max_examples, report)
        problems += [f"schemathesis: {f}" for f in report["schemathesis"]["failures"]]
        report["memory_after_schemathesis"] = host.memory()
        problems += unauthenticated_sweep(host, token, doc, report)
        problems += uploads(host, token, report)
        if not host.alive():
            problems.append("the host died")
        status, _ = request(host, "GET", "/healthz")
        report["healthz_after"] = status
        report["memory_at_end"] = host.memory()
    finally:
        rc = host.stop()
        report["host_exit"] = rc
        report["problems"] = problems
        (OUT / "report.json").write_text(json.dumps(report, indent=2))
    if rc != 0:
        problems.append(f"kasm dev exited {rc} on SIGTERM")
    for p in problems:
        log(f"PROBLEM: {p}")
    log(f"report: {OUT / 'report.json'}; {'FAILED' if problems else 'passed'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
