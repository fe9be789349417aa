"""Python `mcp` 2.3.x client as the MCP host of `agentgate mcp`, for scripts/e2e-mcp-peers.sh.
Adapted from ../shared/peers/mcp/py_client.py.

usage: python py_host.py [--mode auto|legacy] --http http://127.0.0.1:PORT --connector-url http://127.0.0.1:P/_connector
                         --record RECORD.jsonl --frames FRAMES.jsonl -- <server command...>

Connects in mode="auto" (the default: the client probes `server/discover` first and, on -32601, falls
back to `initialize`) or mode="legacy" (`initialize` straight away), with a NotificationBinding for `notifications/claude/channel`; posts a Teams message to
`POST {http}/api/messages` (dev mode: anonymous, loopback Connector), waits for the push, checks the
envelope and meta, calls `reply` and checks the fake Connector received the text.
Prints `PASS: …` / `FAIL: …` per check and `DONE` at the end; exits 0 when every check passed.
Env: E2E_APP_ID, E2E_TENANT, E2E_ALEX (AAD object id of the sender), E2E_NONCE.
"""
import argparse
import asyncio
import json
import os
import re
import sys
import time
import urllib.request

from pydantic import BaseModel, ConfigDict

from mcp import Client, StdioServerParameters
from mcp.client import ClientExtension, NotificationBinding

TOOLS = {"status", "list_conversations", "read_messages", "wait_for_messages", "ack_messages", "reply",
         "send_message", "send_to_user", "send_card", "update_card", "update_message", "delete_message",
         "send_typing", "stream_start", "stream_append", "stream_finish", "list_members", "recent_audit", "react",
         "claim_conversations", "release_conversations", "get_file", "send_file"}
ENVELOPE = re.compile(r"^⟦untrusted_content ([A-Za-z0-9]+)⟧\n(.*)\n⟦/untrusted_content \1⟧$", re.S)
META_KEY = re.compile(r"^[A-Za-z0-9_]+$")

failed = 0
MODE = "auto"


def check(name: str, ok: bool, detail: object = "") -> bool:
    global failed
    name = name.replace("{M}", f"({MODE})")
    if ok:
        print(f"PASS: {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL: {name}" + (f" -- {detail}" if detail != "" else ""), flush=True)
    return ok


class ChannelParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: str
    meta: dict[str, str] | None = None


received: list[ChannelParams] = []


async def on_channel(p: ChannelParams) -> None:
    received.append(p)
    print("notification notifications/claude/channel:", p.model_dump_json(), file=sys.stderr, flush=True)


class ClaudeChannel(ClientExtension):
    identifier = "com.example/claude-channel"

    def notifications(self):
        return [NotificationBinding(method="notifications/claude/channel", params_type=ChannelParams, handler=on_channel)]


def http(method: str, url: str, body: object | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def wait_http(url: str, secs: float) -> bool:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if (await asyncio.to_thread(http, "GET", url))[0] == 200:
                return True
        except OSError:
            pass
        await asyncio.sleep(0.1)
    return False


def jsonl(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def discover_then_initialize(frames: list[dict]) -> tuple[bool, str]:
    """The first frame the client sent is `server/discover`, agentgate answered it with -32601, and the
    client then completed `initialize` on the same connection."""
    sent = [f["frame"] for f in frames if f["dir"] == ">" and isinstance(f["frame"], dict)]
    got = [f["frame"] for f in frames if f["dir"] == "<" and isinstance(f["frame"], dict)]
    if not sent or sent[0].get("method") != "server/discover":
        return False, f"first frame sent: {sent[:1]}"
    answer = next((g for g in got if g.get("id") == sent[0].get("id")), None)
    if not answer or (answer.get("error") or {}).get("code") != -32601:
        if answer and "result" in answer:  # the whole result repeats the instructions: name its shape only
            r = answer["result"]
            answer = {"result": {"supportedVersions": r.get("supportedVersions"), "capabilities": r.get("capabilities"), "...": "..."}}
        return False, f"agentgate answered server/discover with {json.dumps(answer)}"
    init = next((s for s in sent if s.get("method") == "initialize"), None)
    init_answer = init and next((g for g in got if g.get("id") == init.get("id") and "result" in g), None)
    if not init_answer:
        return False, "no successful initialize after the -32601"
    return True, ""


async def main(a) -> None:
    app, tenant, alex, nonce = (os.environ[k] for k in ("E2E_APP_ID", "E2E_TENANT", "E2E_ALEX", "E2E_NONCE"))
    params = StdioServerParameters(command=a.cmd[0], args=a.cmd[1:], env=dict(os.environ))
    async with Client(params, mode=a.mode, extensions=[ClaudeChannel()], read_timeout_seconds=30) as client:
        if a.mode == "auto":
            ok, why = discover_then_initialize(jsonl(a.frames))
            check("python mcp (mode auto): `server/discover` answered -32601, then the client's initialize "
                  f"succeeded (negotiated {client.protocol_version})", ok, why)
        else:
            sent = [f["frame"].get("method") for f in jsonl(a.frames) if f["dir"] == ">" and isinstance(f["frame"], dict)]
            check(f"python mcp (mode legacy): initialize handshake (negotiated {client.protocol_version})",
                  sent[:1] == ["initialize"] and "server/discover" not in sent, sent[:3])
        exp = client.server_capabilities.experimental or {}
        check("python mcp {M}: the server declares experimental claude/channel (and no permission relay without approvers)",
              "claude/channel" in exp and "claude/channel/permission" not in exp, exp)
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        check(f"python mcp {{M}}: tools/list has the {len(TOOLS)} tools", names == TOOLS, sorted(names ^ TOOLS))

        if not check("python mcp {M}: the gateway's HTTP side is up (GET /healthz)", await wait_http(a.http + "/healthz", 20)):
            return
        chat = f"a:py-{MODE}-{nonce}"
        text = f"py {MODE} {nonce}: <b>hello</b> from Teams &amp; more ✓"
        activity = {
            "type": "message", "id": f"py-{MODE}-msg-{nonce}", "timestamp": "2026-11-22T08:00:00.000Z",
            "serviceUrl": a.connector_url, "channelId": "msteams",
            "from": {"id": "29:alex", "name": "Alex Wilber", "aadObjectId": alex},
            "conversation": {"conversationType": "personal", "tenantId": tenant, "id": chat},
            "recipient": {"id": f"28:{app}", "name": "agentgate e2e"},
            "text": text, "textFormat": "plain", "locale": "en-US",
            "channelData": {"tenant": {"id": tenant}},
        }
        status, body = await asyncio.to_thread(http, "POST", a.http + "/api/messages", activity)
        check("python mcp {M}: POST /api/messages (personal message, dev-anonymous) -> 202", status == 202, f"{status} {body}")
        mine = lambda: [p for p in received if (p.meta or {}).get("message_id") == activity["id"]]
        for _ in range(100):
            if mine():
                break
            await asyncio.sleep(0.1)
        why = f"{len(received)} other channel notifications"
        if client.protocol_version >= "2026-07-28":
            why += (f"; the session negotiated {client.protocol_version} through server/discover, so there was no "
                    "initialize/notifications/initialized, and agentgate starts its push (and verdict) tasks only in "
                    "on_initialized")
        if not check("python mcp {M}: notifications/claude/channel arrives through the NotificationBinding (within 10 s)",
                     bool(mine()), why):
            return
        n = mine()[0]
        m = ENVELOPE.match(n.content)
        check("python mcp {M}: content is the ⟦untrusted_content NONCE⟧ envelope around the sender's text (HTML stripped)",
              bool(m) and m.group(2) == f"py {MODE} {nonce}: hello from Teams & more ✓", n.content)
        meta = n.meta or {}
        check("python mcp {M}: meta keys are identifiers ([A-Za-z0-9_]+) and name the chat, message, sender, tenant",
              bool(meta) and all(META_KEY.match(k) for k in meta)
              and meta.get("chat_id") == chat and meta.get("message_id") == activity["id"]
              and meta.get("user_id") == alex and meta.get("tenant") == tenant and meta.get("event") == "message", meta)

        reply_text = f"py {MODE} reply {nonce}: hello Alex ✓"
        r = await client.call_tool("reply", {"chat_id": chat, "text": reply_text, "reply_to": activity["id"]})
        sc = r.structured_content or {}
        check("python mcp {M}: tools/call reply -> delivered with a message_id", not r.is_error and sc.get("status") == "delivered"
              and bool(sc.get("message_id")), r.model_dump_json())
        landed = [e for e in jsonl(a.record) if e["method"] == "POST" and e["conversation"] == chat
                  and isinstance(e["body"], dict) and e["body"].get("text") == reply_text]
        check("python mcp {M}: the fake Connector received the reply (POST v3/conversations/{chat}/activities/{msg}, dev token)",
              len(landed) == 1 and landed[0]["path"].endswith("/activities/" + activity["id"])
              and landed[0]["authorization"] == "Bearer agentgate-dev-mode-no-credential", landed)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    ap.add_argument("--http", required=True)
    ap.add_argument("--connector-url", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--frames", required=True)
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    MODE = args.mode
    try:
        asyncio.run(main(args))
        print("DONE", flush=True)
    except BaseException as e:  # a crash is a failure with its reason (the traceback goes to stderr)
        check("python mcp {M}: the client session ran to the end", False, repr(e))
        import traceback
        traceback.print_exc()
    sys.exit(1 if failed else 0)
