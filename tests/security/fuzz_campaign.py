"""Long fuzz campaign over the same properties as the bounded tests, for a given time.

    python -m tests.security.fuzz_campaign --seconds 300 [--target batch|record|snapshot|http]

Unlike the tests it does not stop at the first failure: it counts every input, groups failures
by (target, exception type, last frame in bknr code) and prints one example of each, then a JSON
summary line ``{"inputs": {...}, "failures": {...}}``. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.security import fuzzing

counts: Counter[str] = Counter()
failures: Counter[str] = Counter()
examples: dict[str, str] = {}


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/bknr_cluster/" in f.filename
              or "/examples/" in f.filename]
    return f"{frames[-1].filename.split('/work/main/')[-1]}:{frames[-1].lineno}" if frames else "?"


def _signature(target: str, exc: BaseException) -> str:
    """Group failures by kind, not by the input that showed them."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, AssertionError) and cause is not None:
        return f"{target}: {type(cause).__name__} escaped at {_where(cause)}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    m = re.match(r"(\w+) (/[^/ ]+)", text)
    if target == "http" and m:
        status = re.search(r"-> (\d+)", text)
        err = re.search(r"internal error: (\w+)", text)
        return (f"http: {m.group(1)} {m.group(2)} -> {status.group(1) if status else '?'} "
                f"{err.group(1) if err else ''} {'changed state' if 'changed state' in text else ''}")
    return f"{target}: {type(exc).__name__} at {_where(exc)}: {re.sub(r'[0-9]+', 'N', text)[:120]}"


def _record(target: str, fn: Any, *args: Any) -> None:
    counts[target] += 1
    try:
        fn(*args)
    except Exception as exc:  # collected, not raised: the campaign keeps going
        sig = _signature(target, exc)
        failures[sig] += 1
        examples.setdefault(sig, repr(args[-1])[:400])


def _batch(chunk: int) -> Any:
    @settings(max_examples=chunk, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzing.batch_inputs())
    def run(data: bytes) -> None:
        _record("batch", fuzzing.check_batch, data)
    return run


def _record_target(chunk: int) -> Any:
    from tests.security.test_fuzz_decoders import _index, _record_store

    @settings(max_examples=chunk, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzing.record_inputs(_record_store))
    def run(rec: bytes) -> None:
        _record("record", lambda r: fuzzing.check_record(_record_store, r, next(_index)), rec)
    return run


def _snapshot(chunk: int) -> Any:
    from tests.security.test_fuzz_decoders import _populated, _snapshot_source

    target = _populated("dst-")
    original = target.snapshot_bytes()

    @settings(max_examples=chunk, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzing.snapshot_inputs(_snapshot_source))
    def run(data: bytes) -> None:
        _record("snapshot", lambda d: fuzzing.check_snapshot(target, d, original), data)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--target", action="append", choices=["batch", "record", "snapshot", "http"])
    ap.add_argument("--chunk", type=int, default=500, help="examples per hypothesis run")
    a = ap.parse_args()
    targets = a.target or ["batch", "record", "snapshot", "http"]
    makers = {"batch": _batch, "record": _record_target, "snapshot": _snapshot}
    http = None
    if "http" in targets:
        from tests.security import http_fuzz
        http = http_fuzz.HttpTarget()
        makers["http"] = lambda chunk: http.campaign_runner(chunk, _record)
    deadline = time.monotonic() + a.seconds
    share = a.seconds / len(targets)
    try:
        for t in targets:
            stop = min(deadline, time.monotonic() + share)
            while time.monotonic() < stop:
                makers[t](a.chunk)()
    finally:
        if http is not None:
            http.close()
    for sig, n in failures.most_common():
        print(f"{n:7d}  {sig}\n         e.g. {examples[sig]}")
    print(json.dumps({"seconds": a.seconds, "inputs": dict(counts), "total_inputs": sum(counts.values()),
                      "failures": dict(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
