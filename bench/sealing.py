"""``python -m bench.sealing``: what sealing costs the server per call (docs/protocol.md section 16), alone.

For a get_all of 10 and of 1,000 todos, the server's part of a sealed call: opening the call's envelope and sealing
the answer's (AES-256-GCM, a new key object each, as the pipeline does), timed in this process over repeated
batches (process CPU; the median and the minimum of the batches). The served comparison, with everything else a
call does around it, is ``python -m bench.interleaved --variants bastion v2 sealed in-process in-process-v2
in-process-sealed --cases get_all-10 get_all-1000`` (docs/benchmarks.md, "What version 2 costs").
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from kernel.core import sealing


def answer_of(todos: int) -> bytes:
    """A get_all answer of ``todos`` todos, shaped as the todo plugin's."""
    return json.dumps({"result": [{"id": f"{n:012x}", "vsn": 1, "text": f"todo number {n}", "done": False}
                                  for n in range(todos)]}, separators=(",", ":")).encode()


def measure(todos: int, batches: int = 7) -> dict:
    key, other = os.urandom(32), os.urandom(32)
    call_aad = sealing.call_aad("1767222000", "AAECAwQFBgcICQoLDA0ODw", "/api/get_all", "alpha.example.com")
    answer_aad = sealing.answer_aad("AAECAwQFBgcICQoLDA0ODw", 200)
    envelope, answer = sealing.seal(key, b"", call_aad), answer_of(todos)
    count = 2000 if todos <= 10 else 200
    per_call = []
    for _ in range(batches):
        started = time.process_time()
        for _ in range(count):
            sealing.open_envelope(key, envelope, call_aad)
            sealing.seal(other, answer, answer_aad)
        per_call.append((time.process_time() - started) / count * 1e6)
    return {"todos": todos, "answer_bytes": len(answer), "median_us": round(statistics.median(per_call), 1),
            "min_us": round(min(per_call), 1)}


def main() -> int:
    print("| get_all of | answer bytes | server crypto per sealed call, µs (median, min) |")
    print("|---:|---:|---:|")
    for todos in (10, 1000):
        row = measure(todos)
        print(f"| {row['todos']:,} | {row['answer_bytes']:,} | {row['median_us']} ({row['min_us']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
