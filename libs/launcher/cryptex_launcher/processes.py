"""Find the live processes of one local stack (`./cryptex up`) by its state dir and Redis.

Used by the launcher's tests and by bench/bench_stack.py to prove that nothing a stack
started outlives it. A process belongs to the stack when its working directory is in the
state dir (Redis rewrites its command line and environment, but not its cwd), the state
dir is in its command line or environment (the launcher, PostgreSQL), or the stack's Redis
address is in its environment (every service) together with any extra `env_needles`.
"""

from __future__ import annotations

import os
from pathlib import Path


def stack_processes(state_dir: Path, redis_port: int, env_needles: tuple[bytes, ...] = ()) -> dict[int, str]:
    """pid -> command line of every live process of the stack (this process excluded)."""
    state = str(state_dir)
    redis_addr = f"127.0.0.1:{redis_port}/".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        service = redis_addr in environ and all(n in environ for n in env_needles)
        ours = cwd.startswith(state) or state.encode() in cmdline or state.encode() in environ or service
        if cmdline and ours:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found
