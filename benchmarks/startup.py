"""Start-up time of the ``segzoo`` command and of ``import segzoo``, each in a fresh interpreter.

Usage: ``python benchmarks/startup.py [--repeats 5] [--out benchmarks/results/startup_cpu.json]``.
Each command runs ``repeats`` times in a new process (wall clock, including the interpreter's own start-up);
the table gives the median and the minimum, and which heavy modules the command imported. Commands that train
(``fit`` ...) are not timed here: they import Lightning by design. Aim: ``segzoo --version`` under 1 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEAVY = ("torch", "monai", "lightning", "wandb")
CASES = {
    "segzoo --version": "from segzoo.cli import main; main(['--version'])",
    "segzoo --help": "from segzoo.cli import main; main(['--help'])",
    "segzoo recipes": "from segzoo.cli import main; main(['recipes'])",
    "import segzoo": "import segzoo",
    "segzoo nets drnet": "from segzoo.cli import main; main(['nets', 'drnet'])",
    "python -c pass (interpreter alone)": "pass",
}


def measure(code: str, repeats: int) -> dict:
    probe = f"{code}\nimport sys\nprint('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    times, heavy = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-1000:])
        heavy = [line.split()[1:] for line in result.stderr.splitlines() if line.startswith("HEAVY")][-1]
    return {"median_s": statistics.median(times), "min_s": min(times), "samples_s": times, "imports": heavy}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results" / "startup_cpu.json"))
    args = p.parse_args()
    rows = {name: measure(code, args.repeats) for name, code in CASES.items()}
    print("| command | median (s) | min (s) | heavy modules imported |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| `{name}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {', '.join(r['imports']) or '-'} |")
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "repeats": args.repeats,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
