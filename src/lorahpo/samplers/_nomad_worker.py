"""Runs ``PyNomad.optimize`` in its own process and speaks JSON lines over stdin/stdout.

NOMAD calls its blackbox from C++ and cannot be interrupted from Python. In a child process it
can: the parent simply ends it. Protocol, one JSON object per line:

- parent -> child ``{"run": [x0, lower, upper, params]}``: start NOMAD; ``x0`` is a point, or
  a list of points that NOMAD evaluates together first (its X0 file).
- child -> parent ``{"block": [[x...], ...]}``: points to evaluate; the parent answers
  ``{"values": [outputs or null, ...]}``, outputs a list of NOMAD's outputs (objectives, then
  constraints), null a failed evaluation.
- child -> parent ``{"done": stop_reason}``: NOMAD stopped; the parent sends another ``run``
  or closes stdin.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any


def main() -> None:
    import PyNomad

    # NOMAD prints from C++ straight to file descriptor 1: move the protocol to a private copy
    # of it and point descriptor 1 (and sys.stdout) at stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    def blackbox(block: Any) -> Any:
        # With BB_MAX_BLOCK_SIZE 1 PyNomad passes one point and expects one flag.
        single = not hasattr(block, "get_x")
        evals = [block] if single else [block.get_x(i) for i in range(block.size())]
        send({"block": [[e.get_coord(j) for j in range(e.size())] for e in evals]})
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)  # the parent went away
        values = json.loads(line)["values"]
        for e, v in zip(evals, values, strict=True):
            if v is not None:
                e.setBBO(" ".join(repr(float(o)) for o in v).encode())
        flags = [v is not None for v in values]
        return flags[0] if single else flags

    for line in sys.stdin:
        x0, lower, upper, params = json.loads(line)["run"]
        starts = None
        if x0 and isinstance(x0[0], list):  # several starting points: NOMAD reads them from a file
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as starts:
                starts.write("".join(" ".join(repr(float(v)) for v in p) + "\n" for p in x0))
            x0, params = [], [*params, f"X0 {starts.name}"]
        try:
            result = PyNomad.optimize(blackbox, x0, lower, upper, params)
        finally:
            if starts is not None:
                os.unlink(starts.name)
        send({"done": result.get("stop_reason", "")})


if __name__ == "__main__":
    main()
