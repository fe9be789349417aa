"""A transparent stdio tap between an MCP host and `agentgate mcp`, for scripts/e2e-mcp-peers.sh.

usage: python3 tap.py FRAMES_FILE STDERR_FILE PID_DIR [--] COMMAND [ARGS...]

Runs COMMAND with its stdin/stdout relayed byte for byte (line by line: MCP's stdio transport is
newline-delimited JSON) and appends every line to FRAMES_FILE as {"dir": ">" (host to server) or "<",
"frame": <the parsed JSON, or the raw text>}. COMMAND's stderr goes to STDERR_FILE. COMMAND's PID is written
to PID_DIR/<pid> (and removed when it exits) so that the harness can stop it if the host did not.
SIGTERM/SIGINT are passed on to COMMAND. Exits with COMMAND's status.
"""
import json
import os
import signal
import subprocess
import sys
import threading


def main() -> int:
    frames_path, stderr_path, pid_dir = sys.argv[1:4]
    cmd = sys.argv[4:]
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        print("usage: tap.py FRAMES STDERR PID_DIR [--] COMMAND...", file=sys.stderr)
        return 2
    err = open(stderr_path, "ab")
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    pid_file = os.path.join(pid_dir, str(child.pid))
    with open(pid_file, "w") as f:
        f.write(" ".join(cmd))
    lock = threading.Lock()
    log = open(frames_path, "a", encoding="utf-8")

    def record(direction: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        try:
            frame = json.loads(text)
        except ValueError:
            frame = text
        with lock:
            log.write(json.dumps({"dir": direction, "frame": frame}, ensure_ascii=False) + "\n")
            log.flush()

    def forward(sig, _frame):
        if child.poll() is None:
            child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def upstream() -> None:
        try:
            for line in iter(sys.stdin.buffer.readline, b""):
                record(">", line)
                child.stdin.write(line)
                child.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            try:
                child.stdin.close()
            except OSError:
                pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        for line in iter(child.stdout.readline, b""):
            record("<", line)
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
    except (BrokenPipeError, OSError):
        child.terminate()
    rc = child.wait()
    try:
        os.unlink(pid_file)
    except OSError:
        pass
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
