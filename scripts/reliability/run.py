#!/usr/bin/env python3
"""Reliability suite for agentgate on Postgres: replicas killed, Postgres restarted, JWKS down, faults at the
Connector. Python 3.11 standard library only; everything on 127.0.0.1.

    python3 scripts/reliability/run.py [--scenarios kill,replies,faults,pg,jwks,soak] [--duration 20]
        [--replicas 3] [--soak 300] [--pg-url postgres://postgres@127.0.0.1:5432] [--rounds 1] [--keep]

See scripts/reliability/README.md for what each scenario does and checks. The `pg` scenario RESTARTS the local
Postgres server (pg_ctlcluster); it runs only when named. Exit status: 0 when every check held, 1 on any
violation, 2 on a usage or set-up error.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_ID = "b1000000-0000-4000-8000-0000000000b1"
TENANT = "71000000-0000-4000-8000-000000000071"
USER_AAD = "a1000000-0000-4000-8000-0000000000a1"
SCOPE = "https://api.botframework.com/.default"
ALL_SCENARIOS = ["kill", "replies", "faults", "pg", "jwks", "soak"]
QUICK = ["kill", "replies", "faults", "jwks"]
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S', time.gmtime())} +{time.monotonic() - T0:5.1f}s] {msg}",
          file=sys.stderr, flush=True)


class SetupError(Exception):
    """The suite could not set itself up (not a violation by the gateway)."""


# ------------------------------------------------------------------------------------------------ processes

PROCS: dict[int, subprocess.Popen] = {}  # every process this script started and has not reaped yet
PROCS_LOCK = threading.Lock()


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    with PROCS_LOCK:
        PROCS[p.pid] = p
    return p


def stop(p: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop one process we started, by its PID, and reap it."""
    if p is None:
        return
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass
    with PROCS_LOCK:
        PROCS.pop(p.pid, None)


def stop_all() -> None:
    with PROCS_LOCK:
        procs = list(PROCS.values())
    for p in procs:
        stop(p, signal.SIGTERM, 5.0)


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------------------ HTTP helpers

PORTS_TAKEN: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, so that no outgoing connection takes it while a killed
    replica is down (a replica restarts on the same port), and never one handed out before in this run."""
    lo = 20000
    try:
        lo_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo_eph = 32768
    hi = max(lo + 1000, min(lo_eph, 32768))
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(lo, hi)
        if port in PORTS_TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        PORTS_TAKEN.add(port)
        return port
    raise SetupError("no free port found")


def http_req(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 5.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def status_of(port: int, path: str, timeout: float = 1.0) -> int:
    try:
        return http_req(port, "GET", path, timeout=timeout)[0]
    except OSError:
        return 0


def wait_status(port: int, path: str, want: int, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if status_of(port, path) == want:
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------------ Postgres

class Pg:
    """A Postgres server reached with psql (trust or PGPASSWORD); one fresh database per scenario round."""

    def __init__(self, base_url: str):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("postgres", "postgresql") or (u.hostname or "") not in ("127.0.0.1", "localhost", "::1"):
            raise SetupError(f"--pg-url must be postgres://USER@127.0.0.1:PORT (loopback), not {base_url!r}")
        self.base = f"{u.scheme}://{u.netloc}"
        self.query_string = f"?{u.query}" if u.query else ""

    def url(self, db: str) -> str:
        return f"{self.base}/{db}{self.query_string}"

    def psql(self, db: str, sql: str, timeout: float = 30.0) -> str:
        r = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", self.url(db), "-c", sql],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr.strip()[:300]}")
        return r.stdout

    def up(self) -> bool:
        try:
            return self.psql("postgres", "SELECT 1", timeout=3).strip() == "1"
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            return False

    def accepting(self, timeout: float = 0.5) -> bool:
        """A quick probe with a fresh connection: does the server accept a session now? (A raw startup
        message: 'R' = authentication request or OK, 'E' = refused, e.g. starting up or shutting down.)"""
        u = urllib.parse.urlsplit(self.base)
        user = (u.username or "postgres").encode()
        body = b"\x00\x03\x00\x00user\x00" + user + b"\x00database\x00postgres\x00\x00"
        try:
            with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=timeout) as c:
                c.sendall((4 + len(body)).to_bytes(4, "big") + body)
                kind = c.recv(1)
                try:
                    c.sendall(b"X\x00\x00\x00\x04")
                except OSError:
                    pass
                return kind == b"R"
        except OSError:
            return False

    def create(self, db: str) -> None:
        self.psql("postgres", f'CREATE DATABASE "{db}"')

    def drop(self, db: str) -> None:
        try:
            self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"warning: could not drop database {db}: {e}")

    def rows(self, db: str, sql: str) -> list[dict]:
        out = self.psql(db, f"SELECT row_to_json(t) FROM ({sql}) t")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ fake Connector

@dataclass
class Faults:
    """Probabilities of each misbehaviour of the fake Connector, per activity request."""
    p429_secs: float = 0.0
    p429_date: float = 0.0
    p5xx: float = 0.0
    slow: float = 0.0          # answered correctly after 0.2 to 1.0 s
    timeout: float = 0.0       # lands, then answers only after the gateway's request timeout (ambiguous)
    drop_before: float = 0.0   # connection closed without an answer, nothing landed (ambiguous to the gateway)
    drop_after: float = 0.0    # lands, then connection closed without an answer (ambiguous)
    hang_secs: float = 4.0


class FakeConnector:
    """A strict fake of the Bot Connector and of the Entra token endpoint, on 127.0.0.1.

    POST /{tenant}/oauth2/v2.0/token: a client-credentials grant for the bot (grant_type, client_id = the bot's
    app id, client_secret = the secret, scope = the Bot Framework API) gets a fresh opaque token; anything else
    gets Entra's 400/401 error shape. POST /_connector/v3/conversations/{id}/activities[/{replyToId}] needs
    `Authorization: Bearer <a token it issued>`, `Content-Type: application/json`, a JSON body of type
    `message` with text, whose `conversation.id` (when present) is the path's. Anything else is refused and
    counted as a refusal (a violation). Every request to a conversation counts as an attempt (for Teams' rate
    limits); an activity that the fake accepted counts as landed, whether or not its answer reached the gateway.
    """

    def __init__(self, secret: str, faults: Faults | None = None, seed: int = 1):
        self.secret = secret
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.issued: set[str] = set()
        self.token_requests = 0
        self.refusals: list[str] = []
        self.attempts: list[tuple[float, str]] = []        # (time, conversation) of every activity request
        self.landed: list[tuple[float, str, str]] = []     # (time, conversation, text)
        self.fault_counts: collections.Counter = collections.Counter()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def send_json(self, status, body, extra=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                path = urllib.parse.urlsplit(self.path).path
                parts = path.split("/")
                if len(parts) == 5 and parts[2:] == ["oauth2", "v2.0", "token"]:
                    return fake.token(self, parts[1], raw)
                prefix = "/_connector/v3/conversations/"
                if path.startswith(prefix):
                    rest = path[len(prefix):].split("/")
                    if len(rest) in (2, 3) and rest[1] == "activities" and rest[0] and (len(rest) == 2 or rest[2]):
                        return fake.activity(self, urllib.parse.unquote(rest[0]), raw)
                fake.refuse(f"POST {path}: not a Connector path")
                return self.send_json(404, {"error": {"code": "NotFound", "message": "no such path"}})

            def do_GET(self):
                fake.refuse(f"GET {self.path}: unexpected")
                self.send_json(404, {"error": {"code": "NotFound", "message": "no such path"}})

            do_PUT = do_DELETE = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a connection the gateway gave up on (timeouts, drops): expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_connector"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def refuse(self, why: str) -> None:
        with self.lock:
            self.refusals.append(why)

    def token(self, h, tenant: str, raw: bytes) -> None:
        form = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
        with self.lock:
            self.token_requests += 1
        ctype = h.headers.get("Content-Type", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            self.refuse(f"token request with Content-Type {ctype!r}")
            return h.send_json(400, {"error": "invalid_request", "error_description": "AADSTS900144: form expected"})
        if tenant != TENANT or form.get("grant_type") != "client_credentials" or form.get("client_id") != APP_ID \
                or form.get("scope") != SCOPE:
            self.refuse(f"token request for tenant {tenant}, grant {form.get('grant_type')}, scope {form.get('scope')}")
            return h.send_json(400, {"error": "invalid_request", "error_description": "AADSTS900023: bad request"})
        if not secrets.compare_digest(form.get("client_secret", ""), self.secret):
            self.refuse("token request with a wrong client secret")
            return h.send_json(401, {"error": "invalid_client", "error_description": "AADSTS7000215: invalid secret"})
        tok = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(16)
        with self.lock:
            self.issued.add(tok)
        h.send_json(200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": tok})

    def activity(self, h, conversation: str, raw: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            self.attempts.append((now, conversation))
        auth = h.headers.get("Authorization", "")
        with self.lock:
            known = auth.startswith("Bearer ") and auth[7:] in self.issued
        if not known:
            self.refuse(f"activity for {conversation} with an unknown bearer token")
            return h.send_json(401, {"message": "Authorization has been denied for this request."})
        if not h.headers.get("Content-Type", "").startswith("application/json"):
            self.refuse("activity without Content-Type: application/json")
            return h.send_json(415, {"error": {"code": "BadArgument", "message": "json expected"}})
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        conv_in_body = ((body or {}).get("conversation") or {}).get("id") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("type") != "message" or not body.get("text") \
                or (conv_in_body is not None and conv_in_body != conversation):
            self.refuse(f"bad activity body for {conversation}")
            return h.send_json(400, {"error": {"code": "BadArgument", "message": "bad activity"}})
        f = self.faults
        with self.lock:
            r = self.rng.random()
        text = body["text"]
        edges = []
        acc = 0.0
        for name in ("p429_secs", "p429_date", "p5xx", "slow", "timeout", "drop_before", "drop_after"):
            acc += getattr(f, name)
            edges.append((acc, name))
        kind = next((name for edge, name in edges if r < edge), "ok")
        with self.lock:
            self.fault_counts[kind] += 1
        if kind == "p429_secs":
            return h.send_json(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "1"})
        if kind == "p429_date":
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return h.send_json(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": when})
        if kind == "p5xx":
            with self.lock:
                status = self.rng.choice([500, 502, 503, 504])
            return h.send_json(status, {"error": {"code": "ServiceError", "message": "try again"}})
        if kind == "drop_before":
            h.close_connection = True
            return None
        if kind == "slow":
            time.sleep(0.2 + 0.8 * random.random())
        with self.lock:
            self.landed.append((time.monotonic(), conversation, text))
            n = len(self.landed)
        if kind == "drop_after":
            h.close_connection = True
            return None
        if kind == "timeout":
            time.sleep(f.hang_secs)
        try:
            h.send_json(201, {"id": f"1{n:012d}"})
        except OSError:
            pass
        return None

    def limits_report(self) -> dict:
        """The most requests Teams' windows would have seen: per conversation in 1 s and 2 s, per tenant in 1 s."""
        with self.lock:
            attempts = sorted(self.attempts)
        per_conv: dict[str, list[float]] = collections.defaultdict(list)
        for t, c in attempts:
            per_conv[c].append(t)

        def most(times: list[float], window: float) -> int:
            best, j = 0, 0
            for i, t in enumerate(times):
                while t - times[j] >= window:
                    j += 1
                best = max(best, i - j + 1)
            return best

        conv1 = max((most(ts, 1.0) for ts in per_conv.values()), default=0)
        conv2 = max((most(ts, 2.0) for ts in per_conv.values()), default=0)
        conv30 = max((most(ts, 30.0) for ts in per_conv.values()), default=0)
        tenant1 = most([t for t, _ in attempts], 1.0)
        return {"conv_1s": conv1, "conv_2s": conv2, "conv_30s": conv30, "tenant_1s": tenant1}


# ------------------------------------------------------------------------------------------------ OpenID + tokens

class Fixture:
    """examples/bench_fixture: OpenID metadata + JWKS on loopback, and RS256 Bot Framework channel tokens."""

    def __init__(self, binary: Path, scratch: Path):
        self.binary, self.scratch = binary, scratch
        self.port = free_port()
        self.key = scratch / "fixture-key.pem"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/.well-known/openidconfiguration"

    def start(self) -> None:
        self.proc = spawn([str(self.binary), "serve", "--port", str(self.port), "--key-file", str(self.key)],
                          self.scratch / "fixture.log")
        if not wait_status(self.port, "/v1/keys", 200, 30):
            raise SetupError("bench_fixture did not start (see fixture.log)")

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)
        self.proc = None

    def mint(self, aud: str, service_url: str) -> str:
        r = subprocess.run([str(self.binary), "mint", "--key-file", str(self.key), "--aud", aud, "--serviceurl",
                            service_url, "--exp", "7200"], capture_output=True, text=True, check=True)
        return r.stdout.strip()


# ------------------------------------------------------------------------------------------------ replicas

class Replica:
    def __init__(self, idx: int, binary: Path, scratch: Path, settings: dict):
        self.idx, self.binary, self.scratch = idx, binary, scratch
        self.port, self.mcp_port = free_port(), free_port()
        self.config = scratch / f"replica-{idx}.toml"
        self.log = scratch / f"replica-{idx}.log"
        self.proc: subprocess.Popen | None = None
        self.env = dict(settings["env"])
        self.config.write_text(render_config(idx, self.port, self.mcp_port, scratch, settings))
        self.starts = 0

    def start(self, wait: float = 30.0) -> None:
        self.proc = spawn([str(self.binary), "serve", "--config", str(self.config)], self.log, self.env)
        self.starts += 1
        if wait and not wait_status(self.port, "/readyz", 200, wait):
            tail = self.log.read_text(errors="replace")[-1500:]
            raise SetupError(f"replica {self.idx} did not become ready:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)
        self.proc = None

    def rss_kib(self) -> int:
        if not self.alive():
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


def render_config(idx: int, port: int, mcp_port: int, scratch: Path, s: dict) -> str:
    return f"""# agentgate replica {idx} of the reliability suite (scripts/reliability/run.py)
data_dir = "{scratch}/data-{idx}"

[server]
bind = "127.0.0.1:{port}"
shutdown_grace_secs = 2

[store]
url = "{s['store_url']}"
pool_size = 4

[auth]
token_cache_entries = {s.get('token_cache_entries', 10000)}

[clouds.public]
openid_metadata_url = "{s['metadata_url']}"
token_authority = "http://127.0.0.1:{s['connector_port']}"
connector_endpoints = ["{s['service_url']}"]

[outbound]
poll_interval_ms = 100
max_attempts = 30
max_age_secs = 900
request_timeout_secs = {s.get('outbound_timeout', 3)}

[log]
level = "warn"

[mcp]
bind = "127.0.0.1:{mcp_port}"

[[mcp.tokens]]
name = "reliability"
token = "env:AGENTGATE_REL_MCP_TOKEN"

[[bots]]
app_id = "{APP_ID}"
display_name = "reliability bot"
tenant_id = "{TENANT}"
allowed_tenants = ["{TENANT}"]
credential = "env:AGENTGATE_REL_BOT_SECRET"
policy.dm = "open"
"""


# ------------------------------------------------------------------------------------------------ load generator

@dataclass
class Sent:
    acked: set = field(default_factory=set)        # activity ids answered 2xx
    given_up: set = field(default_factory=set)     # activity ids never answered 2xx
    statuses: collections.Counter = field(default_factory=collections.Counter)
    log: list = field(default_factory=list)        # (t_start, t_end, status or 0 for a connection error, id)


class Load:
    """Posts UNIQUE authenticated personal-chat messages to the replicas in turn, at `rate` per second.

    A request that fails (connection refused or cut, 503) is re-posted, with the same activity id, to the next
    replica, as Teams redelivers: the store must deduplicate it. Any other status is recorded (401/4xx are
    violations in every scenario)."""

    def __init__(self, replicas: list[Replica], token: str, service_url: str, rate: float, conversations: int,
                 prefix: str, workers: int = 8, give_up_after: float = 60.0):
        self.replicas, self.token, self.service_url = replicas, token, service_url
        self.rate, self.conversations, self.prefix = rate, conversations, prefix
        self.workers, self.give_up_after = workers, give_up_after
        self.sent = Sent()
        self.lock = threading.Lock()
        self.next_n = 0
        self.posted: set = set()  # activity ids posted at least once
        self.rr = 0
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.started = 0.0
        self.bursts: list[int] = []  # conversation indices to burst into (faults: exercises the 7/1 s limit)

    def body(self, n: int, conv: str) -> bytes:
        aid = f"{self.prefix}-{n}"
        return json.dumps({
            "type": "message", "id": aid, "timestamp": "2026-12-05T08:00:00.000Z", "serviceUrl": self.service_url,
            "channelId": "msteams",
            "from": {"id": "29:rel-user", "name": "Reliability User", "aadObjectId": USER_AAD},
            "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": conv},
            "recipient": {"id": f"28:{APP_ID}", "name": "reliability bot"},
            "textFormat": "plain", "text": f"message {n}", "channelData": {"tenant": {"id": TENANT}},
        }).encode()

    def start(self) -> None:
        self.started = time.monotonic()
        for _ in range(self.workers):
            t = threading.Thread(target=self.worker, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()

    def take(self) -> tuple[int, str] | None:
        """The next activity number and conversation, paced at `rate` per second; None once stopping."""
        with self.lock:
            n = self.next_n
            self.next_n += 1
            if self.bursts:
                conv = self.bursts.pop()
            else:
                conv = n % self.conversations
        due = self.started + n / self.rate
        while not self.stopping.is_set():
            d = due - time.monotonic()
            if d <= 0:
                return n, f"a:rel-conv-{conv}"
            time.sleep(min(d, 0.2))
        return None

    def worker(self) -> None:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        while True:
            job = self.take()
            if job is None:
                return
            n, conv = job
            aid = f"{self.prefix}-{n}"
            body = self.body(n, conv)
            with self.lock:
                self.posted.add(aid)
            first = time.monotonic()
            while True:
                with self.lock:
                    r = self.replicas[self.rr % len(self.replicas)]
                    self.rr += 1
                t0 = time.monotonic()
                try:
                    status = http_req(r.port, "POST", "/api/messages", body, headers, timeout=15)[0]
                except OSError:
                    status = 0
                t1 = time.monotonic()
                with self.lock:
                    self.sent.statuses[status] += 1
                    self.sent.log.append((t0, t1, status, aid))
                if 200 <= status < 300:
                    with self.lock:
                        self.sent.acked.add(aid)
                    break
                if status not in (0, 503) or t1 - first > self.give_up_after:
                    with self.lock:
                        self.sent.given_up.add(aid)
                    break
                time.sleep(0.05)

    def sent_ids(self) -> set:
        with self.lock:
            return set(self.posted)


# ------------------------------------------------------------------------------------------------ MCP host

class ToolError(Exception):
    pass


class McpSession:
    """A minimal MCP client over Streamable HTTP (JSON-RPC POSTs; answers as JSON or as an SSE stream)."""

    def __init__(self, port: int, token: str, name: str = "reliability-host"):
        self.port, self.token = port, token
        self.session_id: str | None = None
        self.ids = 0
        self.lock = threading.Lock()
        res = self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                      "clientInfo": {"name": name, "version": "1"}}, timeout=10)
        self.protocol = res.get("protocolVersion", "2025-06-18")
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=10)

    def headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "Authorization": f"Bearer {self.token}"}
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
            h["MCP-Protocol-Version"] = getattr(self, "protocol", "2025-06-18")
        return h

    def post(self, msg: dict, timeout: float) -> dict | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/mcp", json.dumps(msg).encode(), self.headers())
            r = conn.getresponse()
            sid = r.getheader("Mcp-Session-Id")
            if sid and not self.session_id:
                self.session_id = sid
            if r.status == 202:
                r.read()
                return None
            if r.status != 200:
                raise OSError(f"/mcp answered {r.status}: {r.read()[:200]!r}")
            if (r.getheader("Content-Type") or "").startswith("text/event-stream"):
                data: list[str] = []
                while True:
                    line = r.readline()
                    if not line:
                        raise OSError("/mcp event stream ended without the answer")
                    line = line.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif line == "" and data:
                        text = "\n".join(data)
                        data = []
                        if not text.strip():
                            continue
                        m = json.loads(text)
                        if m.get("id") == msg.get("id") and ("result" in m or "error" in m):
                            return m
            m = json.loads(r.read())
            return m
        finally:
            conn.close()

    def rpc(self, method: str, params: dict, timeout: float = 30.0) -> dict:
        with self.lock:
            self.ids += 1
            i = self.ids
        m = self.post({"jsonrpc": "2.0", "id": i, "method": method, "params": params}, timeout)
        if m is None or "error" in m:
            raise OSError(f"{method}: {m and m.get('error')}")
        return m["result"]

    def tool(self, name: str, args: dict, timeout: float = 40.0) -> dict:
        res = self.rpc("tools/call", {"name": name, "arguments": args}, timeout)
        text = "".join(c.get("text", "") for c in res.get("content", []) if c.get("type") == "text")
        if res.get("isError"):
            raise ToolError(text)
        try:
            return json.loads(text)
        except ValueError:
            return res.get("structuredContent") or {"text": text}


class Host:
    """An LLM host on /mcp: long-polls `wait_for_messages`, acknowledges what it received (the `ack` list of its
    next poll) and, with `reply`, answers every message with the `reply` tool, numbering its replies per
    conversation. When its replica goes away it reconnects to the next one (a new session: unacknowledged
    entries come again, which is allowed; an entry delivered again after its acknowledgement was confirmed is a
    violation)."""

    def __init__(self, replicas: list[Replica], token: str, reply: bool, home: int = 0, workers: int = 16,
                 lookup=None):
        self.replicas, self.token, self.reply = replicas, token, reply
        self.lookup = lookup  # text -> outbox id or None: resolves a reply call cut by a dying replica
        self.home = home
        self.lock = threading.Lock()
        self.session: McpSession | None = None
        self.stopping = threading.Event()
        self.delivered: dict[str, int] = collections.Counter()  # activity id -> deliveries
        self.inbox_of: dict[int, str] = {}
        self.acked: set[int] = set()            # inbox ids whose acknowledgement was confirmed
        self.to_ack: list[int] = []
        self.after_ack: list[str] = []          # deliveries of an entry already acknowledged (violations)
        self.reconnects = 0
        self.errors: list[str] = []
        self.replied: set[str] = set()
        self.replies: list[dict] = []           # {conv, n, text, outbox_id, status}
        self.reply_seq: dict[str, int] = collections.Counter()
        self.reply_failures: list[str] = []
        self.cut_calls = 0
        self.connect_failures = 0
        self.store_unavailable = 0
        self.queues = [collections.deque() for _ in range(workers)]
        self.cv = threading.Condition()
        self.busy = 0
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        t = threading.Thread(target=self.poller, daemon=True)
        t.start()
        self.threads.append(t)
        if self.reply:
            for i in range(len(self.queues)):
                t = threading.Thread(target=self.replier, args=(i,), daemon=True)
                t.start()
                self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        with self.cv:
            self.cv.notify_all()
        for t in self.threads:
            t.join(timeout=60)

    def connect(self) -> McpSession:
        n = len(self.replicas)
        for k in range(n):
            r = self.replicas[(self.home + k) % n]
            if not r.alive():
                continue
            try:
                s = McpSession(r.mcp_port, self.token)
                self.home = r.idx
                return s
            except (OSError, ValueError, http.client.HTTPException):
                self.connect_failures += 1  # a replica starting or dying: try the next one
        raise OSError("no replica to connect to")

    def poller(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.session is None:
                    self.session = self.connect()
                    self.reconnects += 1
                with self.lock:
                    ack = list(self.to_ack)
                res = self.session.tool("wait_for_messages", {"timeout_secs": 1, "limit": 200, "ack": ack}, 20)
                with self.lock:
                    self.acked.update(ack)
                    del self.to_ack[:len(ack)]
                for ev in res.get("events", []):
                    self.on_event(ev)
            except ToolError as e:
                if "store is unavailable" in str(e):
                    self.store_unavailable += 1
                else:
                    self.errors.append(f"wait_for_messages: {e}")
                time.sleep(0.2)
            except (OSError, ValueError, http.client.HTTPException):
                self.session = None
                time.sleep(0.2)

    def on_event(self, ev: dict) -> None:
        iid, aid = int(ev["inbox_id"]), ev.get("message_id", "")
        with self.lock:
            if iid in self.acked:
                self.after_ack.append(aid)
            self.delivered[aid] += 1
            self.inbox_of[iid] = aid
            self.to_ack.append(iid)
            fresh = aid not in self.replied
            self.replied.add(aid)
        if self.reply and fresh and ev.get("event") == "message":
            chat = ev["chat_id"]
            q = self.queues[hash(chat) % len(self.queues)]
            with self.cv:
                q.append((chat, aid))
                self.cv.notify_all()

    def replier(self, i: int) -> None:
        q = self.queues[i]
        while True:
            with self.cv:
                while not q and not self.stopping.is_set():
                    self.cv.wait(0.5)
                if not q:
                    return
                chat, aid = q.popleft()
                self.busy += 1
            try:
                self.reply_seq[chat] += 1
                n = self.reply_seq[chat]
                text = f"reply {n} in {chat} to {aid}"
                rec = {"conv": chat, "n": n, "text": text, "outbox_id": None, "status": None}
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    s = self.session
                    if s is None:
                        time.sleep(0.2)
                        continue
                    try:
                        r = s.tool("reply", {"chat_id": chat, "text": text, "reply_to": aid}, 40)
                        rec["outbox_id"], rec["status"] = r.get("outbox_id"), r.get("status")
                        break
                    except ToolError as e:
                        self.reply_failures.append(f"{text}: {e}")
                        break
                    except (OSError, ValueError, http.client.HTTPException) as e:
                        # The replica died during the call: it may or may not have queued the reply. A careful
                        # host finds out before trying again (here: in the outbox), so that it never asks twice.
                        with self.lock:
                            self.cut_calls += 1
                        if self.session is s:
                            self.session = None
                        while self.session is None and time.monotonic() < deadline:
                            time.sleep(0.1)
                        found = self.lookup(text) if self.lookup else None
                        if found is not None:
                            rec["outbox_id"], rec["status"] = found, "queued before the cut"
                            break
                        if not self.lookup:
                            self.reply_failures.append(f"{text}: {e}")
                            break
                else:
                    self.reply_failures.append(f"{text}: no answer within 120 s")
                with self.lock:
                    self.replies.append(rec)
            finally:
                with self.cv:
                    self.busy -= 1

    def idle(self) -> bool:
        with self.cv:
            return self.busy == 0 and not any(self.queues)


# ------------------------------------------------------------------------------------------------ scenarios

@dataclass
class Result:
    scenario: str
    round: int
    rows: dict
    outbound: dict | None = None
    extra: list = field(default_factory=list)
    violations: list = field(default_factory=list)


class Run:
    def __init__(self, args):
        self.args = args
        self.pg = Pg(args.pg_url)
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        if not target.is_absolute():
            target = ROOT / target
        self.agentgate = Path(args.agentgate or target / "release" / "agentgate")
        self.fixture_bin = Path(args.fixture or target / "release" / "examples" / "bench_fixture")
        for b in (self.agentgate, self.fixture_bin):
            if not os.access(b, os.X_OK):
                raise SetupError(f"{b} is missing: cargo build --release --bin agentgate --example bench_fixture")
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"_{os.getpid()}"
        self.out = ROOT / "target" / "reliability" / self.run_id
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: list[Result] = []

    # -- one scenario round: fresh database, fixture, fake Connector, replicas

    def setup(self, name: str, rnd: int, faults: Faults | None = None, token_cache: int = 10000,
              replicas: int | None = None):
        scratch = Path(tempfile.mkdtemp(prefix=f"agentgate-rel-{name}-", dir="/tmp"))
        db = f"agentgate_rel_{self.run_id.lower()}_{name}_{rnd}"
        ctx = {"scratch": scratch, "db": None, "fake": None, "fixture": None, "replicas": []}
        try:
            self.pg.create(db)
            ctx["db"] = db
            self._setup(ctx, name, faults, token_cache, replicas)
        except BaseException:
            self.teardown(ctx)
            raise
        return ctx

    def _setup(self, ctx, name, faults, token_cache, replicas) -> None:
        scratch, db = ctx["scratch"], ctx["db"]
        secret = secrets.token_hex(20)
        mcp_token = secrets.token_hex(24)
        ctx["mcp_token"] = mcp_token
        fake = ctx["fake"] = FakeConnector(secret, faults, seed=len(self.results) * 7919 + sum(map(ord, name)))
        fixture = ctx["fixture"] = Fixture(self.fixture_bin, scratch)
        settings = {
            "store_url": self.pg.url(db), "metadata_url": fixture.metadata_url, "connector_port": fake.port,
            "service_url": fake.service_url, "token_cache_entries": token_cache,
            "outbound_timeout": 3,
            "env": {**{k: v for k, v in os.environ.items()
                       if not (k.startswith("AGENTGATE__") or k in ("AGENTGATE_CONFIG", "RUST_LOG"))},
                    "AGENTGATE_REL_BOT_SECRET": secret, "AGENTGATE_REL_MCP_TOKEN": mcp_token},
        }
        reps = ctx["replicas"] = [Replica(i, self.agentgate, scratch, settings)
                                  for i in range(replicas or self.args.replicas)]
        # Migrate once, then start the replicas together (they would also migrate under an advisory lock).
        r = subprocess.run([str(self.agentgate), "migrate", "--config", str(reps[0].config)], capture_output=True,
                           text=True, env=settings["env"], timeout=60)
        if r.returncode != 0:
            raise SetupError(f"agentgate migrate failed: {r.stderr.strip()[-500:]}")
        for rep in reps:
            rep.start(wait=0)
        for rep in reps:
            if not wait_status(rep.port, "/readyz", 200, 30):
                raise SetupError(f"replica {rep.idx} did not become ready:\n{rep.log.read_text(errors='replace')[-1500:]}")
        ctx["token"] = fixture.mint(APP_ID, fake.service_url)
        bad = fixture.mint("wrong-app-id", fake.service_url)
        probe = Load(reps, bad, fake.service_url, 1, 1, f"probe-{name}")
        st = http_req(reps[0].port, "POST", "/api/messages", probe.body(0, "a:probe"),
                      {"Content-Type": "application/json", "Authorization": f"Bearer {bad}"})[0]
        if st != 401:
            raise SetupError(f"a token for another bot got {st}, expected 401: the suite's set-up is wrong")

    def teardown(self, ctx) -> None:
        for rep in ctx["replicas"]:
            stop(rep.proc, signal.SIGTERM, 10)
        if ctx["fixture"]:
            ctx["fixture"].kill()
        if ctx["fake"]:
            ctx["fake"].close()
        keep = self.args.keep or ctx["db"] is None
        dest = self.out / ctx["scratch"].name
        shutil.copytree(ctx["scratch"], dest, ignore=shutil.ignore_patterns("data-*", "*.pem"), dirs_exist_ok=True)
        shutil.rmtree(ctx["scratch"], ignore_errors=True)
        if not keep:
            self.pg.drop(ctx["db"])

    # -- pieces shared by the scenarios

    def killer(self, ctx, stop_evt: threading.Event, killable: list[int], counter: list[int]) -> threading.Thread:
        rng = random.Random(len(killable) * 31 + 5)

        def run():
            while not stop_evt.wait(rng.uniform(1.5, 4.0)):
                rep = ctx["replicas"][rng.choice(killable)]
                if not rep.alive():
                    continue
                rep.kill()
                counter[0] += 1
                log(f"  SIGKILL replica {rep.idx} (kill #{counter[0]})")
                time.sleep(rng.uniform(0.2, 1.5))
                try:
                    rep.start(wait=30)
                except SetupError as e:
                    counter[1] += 1
                    log(f"  replica {rep.idx} did not restart: {e}")
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def outbox_id(self, ctx, text: str) -> int | None:
        """The outbox entry whose message text is `text`, if the gateway queued one."""
        quoted = text.replace("'", "''")
        for _ in range(20):
            try:
                out = self.pg.psql(ctx["db"], f"SELECT id FROM outbox WHERE op LIKE '%{quoted}\"%' ORDER BY id")
                ids = [int(x) for x in out.split()]
                return ids[0] if ids else None
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.5)
        raise RuntimeError("cannot read the outbox")

    def settle(self, ctx, host: Host, load: Load, limit: float) -> bool:
        """Wait until every stored entry was delivered and acknowledged and the outbox is closed."""
        db = ctx["db"]
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                pending = int(self.pg.psql(db, "SELECT count(*) FROM inbox WHERE state = 'pending'").strip())
                open_ = int(self.pg.psql(db, "SELECT count(*) FROM outbox WHERE state IN ('pending','sending')").strip())
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(1)
                continue
            if pending == 0 and open_ == 0 and host.idle():
                with host.lock:
                    if not host.to_ack:
                        return True
            time.sleep(0.5)
        return False

    def inbound_check(self, ctx, load: Load, host: Host, res: Result, store_may_fail: bool = False) -> None:
        db = ctx["db"]
        rows = self.pg.rows(db, "SELECT activity_id, count(*) AS n, bool_and(state <> 'pending') AS done "
                                "FROM inbox WHERE activity_id LIKE '" + load.prefix + "-%' GROUP BY activity_id")
        stored = {r["activity_id"]: r["n"] for r in rows}
        dup_stored = [a for a, n in stored.items() if n > 1]
        acked = load.sent.acked
        sent = load.sent_ids()
        lost_acked = sorted(acked - set(stored))
        strangers = sorted(set(stored) - sent)
        delivered = {a for a in host.delivered if a.startswith(load.prefix + "-")}
        undelivered = sorted(set(stored) - delivered)
        still_pending = [r["activity_id"] for r in rows if not r["done"]]
        bad_status = {s: n for s, n in load.sent.statuses.items() if s not in (0, 202, 503)}
        res.rows.update({
            "acknowledged": len(acked), "stored": len(stored), "delivered": len(delivered),
            "duplicates": len(dup_stored) + len(host.after_ack), "lost": len(lost_acked) + len(undelivered),
        })
        res.extra.append(
            f"inbound: sent {len(sent)}, 2xx {len(acked)}, never 2xx {len(load.sent.given_up)}, "
            f"answers {dict(sorted(load.sent.statuses.items()))} (0 = connection refused/cut), "
            f"host deliveries {sum(host.delivered.values())} ({sum(n - 1 for n in host.delivered.values())} "
            f"redelivered before an acknowledgement: allowed), host sessions {host.reconnects}")
        v = res.violations
        if lost_acked:
            v.append(f"{len(lost_acked)} activities answered 2xx but not stored: {lost_acked[:5]}")
        if dup_stored:
            v.append(f"{len(dup_stored)} activities stored more than once: {dup_stored[:5]}")
        if strangers:
            v.append(f"{len(strangers)} stored activities nobody sent: {strangers[:5]}")
        if undelivered:
            v.append(f"{len(undelivered)} stored activities never delivered to the host: {undelivered[:5]}")
        if host.after_ack:
            v.append(f"{len(host.after_ack)} deliveries of entries already acknowledged: {host.after_ack[:5]}")
        if still_pending:
            v.append(f"{len(still_pending)} entries still pending after the settle time")
        if bad_status:
            v.append(f"unexpected answers to valid activities: {bad_status}")
        if load.sent.given_up:
            v.append(f"{len(load.sent.given_up)} activities never answered 2xx, redelivered for "
                     f"{load.give_up_after:.0f} s: {sorted(load.sent.given_up)[:5]}")
        if host.errors:
            v.append(f"host errors: {host.errors[:3]}")
        if host.store_unavailable:
            msg = f"{host.store_unavailable} host polls answered `the store is unavailable`"
            (res.extra if store_may_fail else v).append(msg)

    def outbound_check(self, ctx, host: Host, res: Result, enforce_limits: bool) -> None:
        fake: FakeConnector = ctx["fake"]
        rows = self.pg.rows(ctx["db"], "SELECT id, state, conversation_id, attempts, last_error FROM outbox")
        by_id = {r["id"]: r for r in rows}
        with fake.lock:
            landed = list(fake.landed)
        landed_count = collections.Counter(t for _, _, t in landed)
        v = res.violations
        replies = list(host.replies)
        issued = {r["text"]: r for r in replies}
        dup = [t for t, n in landed_count.items() if n > 1]
        unknown = [t for t in landed_count if t not in issued]
        lost, uncertain, dead, unsettled, no_outbox = [], [], [], [], []
        for r in replies:
            row = by_id.get(r["outbox_id"])
            if row is None:
                no_outbox.append(r["text"])
                continue
            state, n = row["state"], landed_count.get(r["text"], 0)
            if state == "delivered" and n != 1:
                lost.append(r["text"])
            elif state == "uncertain":
                uncertain.append(r["text"])
            elif state == "dead":
                dead.append(f"{r['text']}: {row['last_error']}")
            elif state in ("pending", "sending"):
                unsettled.append(r["text"])
        # Order per conversation at the fake: the reply numbers must increase.
        order_broken = []
        last: dict[str, int] = {}
        for _, conv, text in sorted(landed):
            try:
                n = int(text.split()[1])
            except (IndexError, ValueError):
                continue
            if n <= last.get(conv, 0):
                order_broken.append(f"{conv}: #{n} after #{last[conv]}")
            last[conv] = max(n, last.get(conv, 0))
        limits = fake.limits_report()
        res.outbound = {"replies": len(replies), "outbox": len(rows), "landed": len(landed),
                        "duplicates": len(dup), "uncertain": len(uncertain),
                        "lost": len(lost) + len(dead) + len(unsettled) + len(no_outbox)}
        res.extra.append(
            f"outbound: fake saw {len(fake.attempts)} activity requests ({dict(fake.fault_counts)}), "
            f"{fake.token_requests} token requests; {host.cut_calls} reply calls cut by a kill (resolved in the "
            f"outbox before any retry); uncertain landed {sum(1 for t in uncertain if landed_count.get(t))}"
            f"/{len(uncertain)}; most requests in a sliding window: per conversation {limits['conv_1s']}/1 s "
            f"(Teams: 7), {limits['conv_2s']}/2 s (8), {limits['conv_30s']}/30 s (60); per tenant "
            f"{limits['tenant_1s']}/1 s (50)")
        if dup:
            v.append(f"{len(dup)} replies landed more than once: {dup[:5]}")
        if unknown:
            v.append(f"{len(unknown)} landed activities no host asked for: {unknown[:5]}")
        if lost:
            v.append(f"{len(lost)} replies marked delivered but landed 0 or 2+ times: {lost[:5]}")
        if dead:
            v.append(f"{len(dead)} replies dead: {dead[:3]}")
        if unsettled:
            v.append(f"{len(unsettled)} replies still pending/sending after the settle time")
        if no_outbox:
            v.append(f"{len(no_outbox)} replies without an outbox entry: {no_outbox[:5]}")
        if order_broken:
            v.append(f"order per conversation broken at the fake: {order_broken[:5]}")
        if host.reply_failures:
            v.append(f"{len(host.reply_failures)} reply calls failed: {host.reply_failures[:3]}")
        if fake.refusals:
            v.append(f"the fake Connector refused {len(fake.refusals)} requests: {fake.refusals[:3]}")
        over = [f"{k} = {limits[k]} > {m}" for k, m in (("conv_1s", 7), ("conv_2s", 8), ("conv_30s", 60),
                                                         ("tenant_1s", 50)) if limits[k] > m]
        if over:
            msg = f"Teams' rate limits exceeded at the fake across the cluster: {', '.join(over)}"
            (v if enforce_limits else res.extra).append(msg)

    # -- the scenarios

    def scenario_load(self, name: str, rnd: int, *, reply: bool, kill: bool, faults: Faults | None = None,
                      rate: float, conversations: int, duration: float, settle: float, bursts: bool = False,
                      enforce_limits: bool = False, token_cache: int = 10000) -> Result:
        ctx = self.setup(name, rnd, faults, token_cache)
        res = Result(name, rnd, {"kills": 0})
        try:
            reps = ctx["replicas"]
            host = Host(reps, ctx["mcp_token"], reply=reply, home=0, lookup=lambda t: self.outbox_id(ctx, t))
            host.start()
            load = Load(reps, ctx["token"], ctx["fake"].service_url, rate, conversations, f"{name}{rnd}")
            log(f"{name} round {rnd}: {len(reps)} replicas, {rate:.0f} activities/s over {conversations} "
                f"conversations for {duration:.0f} s" + (", SIGKILL at random" if kill else ""))
            load.start()
            stop_kill = threading.Event()
            counter = [0, 0]
            killer = None
            if kill:
                killer = self.killer(ctx, stop_kill, list(range(len(reps))), counter)
            end = time.monotonic() + duration
            burst_rng = random.Random(rnd)
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                if bursts and burst_rng.random() < 0.3:
                    with load.lock:
                        load.bursts.extend([burst_rng.randrange(conversations)] * 10)
            stop_kill.set()
            if killer:
                killer.join()
            load.stop()
            for rep in reps:
                if not rep.alive():
                    rep.start(wait=30)
            log(f"{name} round {rnd}: load stopped; settling (at most {settle:.0f} s)")
            settled = self.settle(ctx, host, load, settle)
            host.stop()
            res.rows["kills"] = counter[0]
            if counter[1]:
                res.violations.append(f"{counter[1]} replica restarts failed")
            if not settled:
                res.violations.append(f"did not settle within {settle:.0f} s")
            self.inbound_check(ctx, load, host, res)
            res.rows["uncertain"] = 0
            if reply:
                self.outbound_check(ctx, host, res, enforce_limits)
                res.rows["uncertain"] = res.outbound["uncertain"]
        finally:
            self.teardown(ctx)
        return res

    def kill(self, rnd):
        d = self.args.duration
        return self.scenario_load("kill", rnd, reply=False, kill=True, rate=150, conversations=20,
                                  duration=d, settle=60)

    def replies(self, rnd):
        d = self.args.duration
        # A third of the answers take 0.2 to 1 s, so that kills catch sends on the wire.
        return self.scenario_load("replies", rnd, reply=True, kill=True, faults=Faults(slow=0.3), rate=30,
                                  conversations=40, duration=d, settle=150)

    def faults(self, rnd):
        d = self.args.duration
        f = Faults(p429_secs=0.05, p429_date=0.05, p5xx=0.10, slow=0.05, timeout=0.02, drop_before=0.02,
                   drop_after=0.02, hang_secs=4.0)
        return self.scenario_load("faults", rnd, reply=True, kill=False, faults=f, rate=60, conversations=60,
                                  duration=d, settle=150, bursts=True, enforce_limits=True)

    def jwks(self, rnd):
        d = self.args.duration
        ctx = self.setup("jwks", rnd, token_cache=0)
        res = Result("jwks", rnd, {"kills": 0, "uncertain": 0})
        try:
            reps = ctx["replicas"]
            host = Host(reps, ctx["mcp_token"], reply=False)
            host.start()
            load = Load(reps, ctx["token"], ctx["fake"].service_url, 150, 20, f"jwks{rnd}")
            log(f"jwks round {rnd}: {len(reps)} replicas, token cache off (every request checks the signature "
                f"with the cached keys), JWKS endpoint down from {d / 4:.0f} s to the end")
            load.start()
            time.sleep(d / 4)
            ctx["fixture"].kill()
            res.rows["kills"] = 1
            down_at = time.monotonic()
            if status_of(ctx["fixture"].port, "/v1/keys") != 0:
                res.violations.append("the JWKS endpoint still answered after it was killed")
            log("  JWKS endpoint (bench_fixture) killed")
            time.sleep(d / 4)
            # A replica started now has no keys at all: it must say so with 503 (not ready, tokens not judged),
            # never 401, and pick the keys up once the endpoint is back.
            victim = reps[-1] if len(reps) > 1 else None
            if victim:
                victim.kill()
                victim.start(wait=0)
                res.rows["kills"] += 1
                if not wait_status(victim.port, "/healthz", 200, 30):
                    res.violations.append(f"replica {victim.idx} did not start without the JWKS endpoint")
                time.sleep(1)
                st_ready = status_of(victim.port, "/readyz")
                st_post = http_req(victim.port, "POST", "/api/messages", load.body(10**9, "a:rel-conv-0"),
                                   {"Content-Type": "application/json", "Authorization": f"Bearer {ctx['token']}"})[0]
                res.extra.append(f"replica {victim.idx} restarted while the JWKS endpoint was down: /readyz "
                                 f"{st_ready}, a valid token -> {st_post}")
                if st_ready != 503 or st_post != 503:
                    res.violations.append(f"a replica without keys answered /readyz {st_ready} and a valid token "
                                          f"{st_post} (expected 503 and 503)")
            time.sleep(d / 2)
            load.stop()
            after = [s for t0, _, s, _ in load.sent.log if t0 >= down_at]
            res.extra.append(f"while the JWKS endpoint was down: {len(after)} requests, "
                             f"{sum(1 for s in after if 200 <= s < 300)} 2xx, {after.count(401)} 401")
            if after.count(401) or load.sent.statuses.get(401):
                res.violations.append(f"{load.sent.statuses.get(401)} valid tokens got 401")
            if not after:
                res.violations.append("no request was made while the JWKS endpoint was down")
            for rep in reps:
                st = status_of(rep.port, "/readyz")
                if st != 200 and rep is not victim:
                    res.violations.append(f"replica {rep.idx} /readyz {st} with cached keys")
            ctx["fixture"].start()
            if victim:
                t = time.monotonic()
                if wait_status(victim.port, "/readyz", 200, 90):
                    res.extra.append(f"JWKS endpoint back: replica {victim.idx} ready {time.monotonic() - t:.1f} s later")
                else:
                    res.violations.append(f"replica {victim.idx} not ready 90 s after the JWKS endpoint came back")
            settled = self.settle(ctx, host, load, 60)
            host.stop()
            if not settled:
                res.violations.append("did not settle within 60 s")
            self.inbound_check(ctx, load, host, res)
        finally:
            self.teardown(ctx)
        return res

    def pgrestart(self, rnd):
        d = self.args.duration
        ctx = self.setup("pg", rnd)
        res = Result("pg", rnd, {"kills": 0, "uncertain": 0})
        try:
            reps = ctx["replicas"]
            host = Host(reps, ctx["mcp_token"], reply=False)
            host.start()
            load = Load(reps, ctx["token"], ctx["fake"].service_url, 100, 20, f"pg{rnd}", give_up_after=120)
            # Probes: Postgres itself (a fresh connection every 50 ms) and /readyz of every replica.
            # The outage, as known for certain: from the moment the old postmaster is gone (no backend left, no
            # commit possible; before that, a fast shutdown refuses new connections while open ones still commit)
            # to the end of the last failed probe (a fresh connection every 5 ms) after it.
            probes: list[tuple[float, float, bool]] = []
            ready: dict[int, list[tuple[float, int]]] = {r.idx: [] for r in reps}
            stop_probe = threading.Event()
            datadir = self.pg.psql("postgres", "SHOW data_directory").strip()
            old_pid = int(Path(datadir, "postmaster.pid").read_text().split()[0])
            gone: list[float] = []

            def probe_pg():
                while not stop_probe.is_set():
                    t = time.monotonic()
                    ok = self.pg.accepting()
                    probes.append((t, time.monotonic(), ok))
                    time.sleep(0.005)

            def watch_postmaster():
                while not stop_probe.is_set():
                    try:  # gone, or a zombie not reaped yet: either way no longer serving
                        state = Path(f"/proc/{old_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    except (OSError, IndexError):
                        state = "gone"
                    if state in ("gone", "Z", "X"):
                        gone.append(time.monotonic())
                        return
                    time.sleep(0.002)

            def probe_ready(rep):
                while not stop_probe.is_set():
                    ready[rep.idx].append((time.monotonic(), status_of(rep.port, "/readyz", 3.0)))
                    time.sleep(0.05)
            threads = [threading.Thread(target=probe_pg, daemon=True),
                       threading.Thread(target=watch_postmaster, daemon=True)] + \
                [threading.Thread(target=probe_ready, args=(r,), daemon=True) for r in reps]
            for t in threads:
                t.start()
            log(f"pg round {rnd}: {len(reps)} replicas, 100 activities/s; RESTARTING the local Postgres at "
                f"{d / 3:.0f} s")
            load.start()
            time.sleep(d / 3)
            t_cmd = time.monotonic()
            r = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.args.pg_version, "main",
                                "restart"], capture_output=True, text=True, timeout=120)
            t_back = time.monotonic()
            res.rows["kills"] = 1
            log(f"  pg_ctlcluster restart took {t_back - t_cmd:.1f} s (exit {r.returncode})")
            if r.returncode != 0:
                res.violations.append(f"pg_ctlcluster restart failed: {r.stderr.strip()[:300]}")
            time.sleep(max(1.0, d * 2 / 3 - (t_back - t_cmd)))
            load.stop()
            time.sleep(3)
            stop_probe.set()
            for t in threads:
                t.join()
            fails = [(t0, t1) for t0, t1, ok in probes if not ok and t0 >= t_cmd]
            res.extra.append(
                (f"probes refused from +{fails[0][0] - t_cmd:.3f} s to +{fails[-1][1] - t_cmd:.3f} s after `restart` began"
                 if fails else "no probe refused after `restart` began")
                + (f"; old postmaster gone at +{gone[0] - t_cmd:.3f} s" if gone else "; old postmaster never gone"))
            o0 = gone[0] if gone else None
            failed = [t1 for t0, t1, ok in probes if not ok and o0 is not None and t1 >= o0]
            if o0 is None:
                res.violations.append(f"the postmaster (pid {old_pid}) never exited: no outage")
                o0 = o1 = t_cmd
            elif not failed:
                res.violations.append("no probe failed after the postmaster exited: the outage was not observed")
                o1 = o0
            else:
                o1 = failed[-1]
            inside = [(s, aid) for t0, t1, s, aid in load.sent.log if t0 >= o0 and t1 <= o1]
            ok_inside = [aid for s, aid in inside if 200 <= s < 300]
            other_inside = collections.Counter(s for s, _ in inside if not (200 <= s < 300) and s != 503)
            res.extra.append(f"Postgres certainly down {o1 - o0:.2f} s (old postmaster gone -> last failed probe); "
                             f"requests made and answered inside that: "
                             f"{len(inside)} ({collections.Counter(s for s, _ in inside)})")
            if ok_inside:
                res.violations.append(f"{len(ok_inside)} requests answered 2xx while Postgres was down")
            if other_inside:
                res.violations.append(f"answers other than 503 during the outage: {dict(other_inside)}")
            for idx, seq in ready.items():
                saw503 = [t for t, s in seq if s == 503 and t >= t_cmd]
                ok_after = [t for t, s in seq if s == 200 and saw503 and t > saw503[-1]]
                res.extra.append(f"replica {idx} /readyz: 503 x{len(saw503)} during/after the restart, "
                                 f"then 200 {'after %.1f s' % (ok_after[0] - saw503[-1]) if ok_after else 'never'}")
                if not saw503:
                    res.violations.append(f"replica {idx} /readyz never answered 503 during the outage")
                elif not ok_after:
                    res.violations.append(f"replica {idx} /readyz did not come back to 200")
            settled = self.settle(ctx, host, load, 90)
            host.stop()
            if not settled:
                res.violations.append("did not settle within 90 s")
            self.inbound_check(ctx, load, host, res, store_may_fail=True)
        finally:
            self.teardown(ctx)
        return res

    def soak(self, rnd):
        secs = self.args.soak
        ctx = self.setup("soak", rnd)
        res = Result("soak", rnd, {"kills": 0, "uncertain": 0})
        try:
            reps = ctx["replicas"]
            host = Host(reps, ctx["mcp_token"], reply=True)
            host.start()
            load = Load(reps, ctx["token"], ctx["fake"].service_url, 40, 100, f"soak{rnd}")
            log(f"soak round {rnd}: {len(reps)} replicas, 40 activities/s over 100 conversations, each answered, "
                f"for {secs} s")
            load.start()
            step = max(5.0, secs / 12)
            end = time.monotonic() + secs
            print(f"\nsoak: RSS per replica (MiB) every {step:.0f} s", flush=True)
            print("| t (s) | " + " | ".join(f"replica {r.idx}" for r in reps) + " | 2xx so far |", flush=True)
            print("|---:|" + "---:|" * len(reps) + "---:|", flush=True)
            samples = []
            while True:
                now = time.monotonic()
                rss = [r.rss_kib() for r in reps]
                samples.append(rss)
                print(f"| {secs - (end - now):.0f} | " + " | ".join(f"{k / 1024:.1f}" for k in rss) +
                      f" | {len(load.sent.acked)} |", flush=True)
                if now >= end:
                    break
                time.sleep(min(step, max(0.0, end - now)))
            load.stop()
            settled = self.settle(ctx, host, load, 120)
            host.stop()
            if not settled:
                res.violations.append("did not settle within 120 s")
            first = [k / 1024 for k in samples[min(1, len(samples) - 1)]]
            last = [k / 1024 for k in samples[-1]]
            res.extra.append("RSS (MiB) after the first step -> at the end: " +
                             ", ".join(f"replica {i}: {a:.1f} -> {b:.1f}" for i, (a, b) in enumerate(zip(first, last))))
            self.inbound_check(ctx, load, host, res)
            self.outbound_check(ctx, host, res, enforce_limits=True)
            res.rows["uncertain"] = res.outbound["uncertain"]
        finally:
            self.teardown(ctx)
        return res

    # -- reporting

    def report(self, results: list[Result]) -> None:
        cols = ["round", "kills", "acknowledged", "stored", "delivered", "duplicates", "uncertain", "lost"]
        ocols = ["replies", "outbox", "landed", "duplicates", "uncertain", "lost"]
        for r in results:
            print(f"\n### {r.scenario}, round {r.round}: {'PASS' if not r.violations else 'FAIL'}", flush=True)
            print("| " + " | ".join(cols) + " |")
            print("|" + "---:|" * len(cols))
            print("| " + " | ".join(str(r.round if c == "round" else r.rows.get(c, "")) for c in cols) + " |")
            if r.outbound:
                print("\nreplies (host -> outbox -> fake Connector):")
                print("| " + " | ".join(ocols) + " |")
                print("|" + "---:|" * len(ocols))
                print("| " + " | ".join(str(r.outbound[c]) for c in ocols) + " |")
            for e in r.extra:
                print(f"- {e}")
            for v in r.violations:
                print(f"- VIOLATION: {v}")
        sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(QUICK),
                    help=f"comma-separated, from {','.join(ALL_SCENARIOS)} (default {','.join(QUICK)}; "
                         "pg restarts the local Postgres server)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario (default 20)")
    ap.add_argument("--replicas", type=int, default=3, help="agentgate replicas (default 3)")
    ap.add_argument("--soak", type=float, default=300.0, help="seconds of the soak scenario (default 300)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of each scenario, fresh database each (default 1)")
    ap.add_argument("--pg-url", default=os.environ.get("AGENTGATE_REL_PG_URL", "postgres://postgres@127.0.0.1:5432"),
                    help="the Postgres server (no database name: one is created per round and dropped after)")
    ap.add_argument("--pg-version", default="15", help="the cluster version for pg_ctlcluster (pg scenario)")
    ap.add_argument("--agentgate", help="the agentgate binary (default target/release/agentgate)")
    ap.add_argument("--fixture", help="the bench_fixture binary (default target/release/examples/bench_fixture)")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    args = ap.parse_args()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in ALL_SCENARIOS]
    if unknown or not names:
        ap.error(f"unknown scenario(s) {unknown}; choose from {ALL_SCENARIOS}")
    if args.replicas < 1 or args.rounds < 1 or args.duration < 4:
        ap.error("--replicas and --rounds must be >= 1, --duration >= 4")
    if "kill" in names and args.replicas < 2 or "replies" in names and args.replicas < 2:
        ap.error("kill and replies need --replicas >= 2")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run = Run(args)
        if not run.pg.up():
            log(f"Postgres is not reachable at {args.pg_url}")
            return 2
        fns = {"kill": run.kill, "replies": run.replies, "faults": run.faults, "pg": run.pgrestart,
               "jwks": run.jwks, "soak": run.soak}
        results = []
        for name in names:
            for rnd in range(1, args.rounds + 1):
                try:
                    r = fns[name](rnd)
                except SetupError as e:
                    log(f"{name} round {rnd}: set-up error: {e}")
                    r = Result(name, rnd, {}, violations=[f"set-up error (not judged): {str(e)[:300]}"])
                results.append(r)
                run.report([r])
        bad = [r for r in results if r.violations]
        print(f"\nreliability: {len(results) - len(bad)} passed, {len(bad)} failed "
              f"({', '.join(f'{r.scenario}#{r.round}' for r in bad) or 'none'}); logs in {run.out}", flush=True)
        return 1 if bad else 0
    except SetupError as e:
        log(f"set-up error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
