"""MPtrj record reading on the shared sample (1,027 frames, 10.8 MB), one thread: the
project's reader against plain JSON libraries.

usage: python benchmarks/reader.py [--repeats 9]

Rows, each the median (and minimum) of ``--repeats`` calls on the sample's bytes, the
garbage collector held as the build holds it:

- ``read_run``: the build's reader (msgspec typed decoding, then columns and checks),
  bytes to :class:`~orbitgraph.preprocess.frame.Frame` objects;
- of which the typed decode alone (bytes to msgspec Structs);
- JSON libraries to plain Python objects, no conversion to arrays: msgspec untyped,
  orjson and pysimdjson where installed (they are not dependencies).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import plain_sample, require_shared  # noqa: E402

KEY = "uncorrected_total_energy"


def timed_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` with the garbage collector held."""
    fn()
    times = []
    for _ in range(repeats):
        gc.disable()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        gc.enable()
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    require_shared()
    import msgspec

    from orbitgraph.preprocess.sources.records import _decoders, read_run

    data = plain_sample().read_bytes().strip()[1:-1]  # a partition's bytes: no outer braces
    wrapped = b"{" + data + b"}"
    run, _ = _decoders(KEY)
    frames, quarantine = read_run(data, KEY)
    rows = {"read_run (bytes to frames)": lambda: read_run(data, KEY),
            "  of which msgspec typed decode": lambda: run.decode(wrapped),
            "msgspec untyped (Python objects)": lambda: msgspec.json.decode(wrapped)}
    try:
        import orjson
        rows["orjson.loads (Python objects)"] = lambda: orjson.loads(wrapped)
    except ImportError:
        pass
    try:
        import simdjson
        parser = simdjson.Parser()
        rows["simdjson as_dict (Python objects)"] = lambda: parser.parse(wrapped).as_dict()
    except ImportError:
        pass
    print(f"sample: {len(frames)} frames, {len(quarantine)} quarantined, "
          f"{len(data) / 1e6:.1f} MB; medians of {args.repeats}")
    for name, fn in rows.items():
        median, least = timed_ms(fn, args.repeats)
        print(f"{name:36s} {median:7.1f} ms  (min {least:6.1f})  "
              f"{len(frames) / median * 1e3:8.0f} frames/s")


if __name__ == "__main__":
    main()
