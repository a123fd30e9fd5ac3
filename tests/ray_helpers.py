"""Processes started for the Ray tests: a restorer-cli driver or a `ray start` head in a session
of its own, and how to end all of it (the Ray workers each have a process group of their own)."""

import os
import signal
import time


def session_members(sid: int) -> list[tuple[int, str]]:
    """The live processes of session `sid` (pid, start time), from /proc: the driver, the Ray
    services it started (its process group) and the Ray workers (each in a group of its own)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in "ZX":
            members.append((int(entry), fields[19]))
    return members


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL the process group `sid` at once, then every other process of the session (Ray
    workers have groups of their own), until none is left."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while members := session_members(sid):
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {members}"
        for pid, start in members:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                if stat[stat.rindex(")") + 2:].split()[19] == start:  # the same process, not a reused pid
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        time.sleep(0.1)
