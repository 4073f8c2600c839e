"""`./cryptex replay --market M [--upto-seq N] [--from-snapshot]`: the engine's replay
(`python -m cryptex_engine replay`, apps/engine/cryptex_engine/replay.py) run as its own
process. Replay judges exactly as the engine does, so it lives in the engine; the launcher
only dispatches to it (libs never import an app)."""

from __future__ import annotations

import subprocess
import sys


def run_replay(args: list[str]) -> int:
    """Run the engine's replay with these arguments; its exit code (its output and errors
    go straight to this process's stdout and stderr)."""
    return subprocess.run([sys.executable, "-m", "cryptex_engine", "replay", *args], check=False).returncode
