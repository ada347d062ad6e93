"""Run a Python module as `python -m`, then print its peak RSS (MB) on stderr."""

from __future__ import annotations

import resource
import runpy
import sys

if __name__ == "__main__":
    assert sys.argv[1] == "-m"
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak_rss_mb={peak_kb // 1024}", file=sys.stderr)
    sys.exit(code)
