"""Run the fuzz targets: `python -m tests.fuzz.run [--runs N] [--engine atheris|mutate]`.

Two engines drive the same targets (tests/fuzz/targets.py):
- atheris (libFuzzer, coverage-guided over the instrumented `replicator` package), used by
  `make fuzz` when it imports;
- mutate: a seeded mutation fuzzer of our own (bit flips, interesting integers, splices,
  truncation over the seed corpus), used by the smoke test in the normal test suite and as
  the fallback where atheris is not installed.

Each target runs in its own process. Per input the harness checks that nothing but the
decoder's ProtocolError escapes (the targets let only that through), that the input finishes
within PER_INPUT_SECONDS (a hang), and, for a sample of inputs (every input in the smoke test),
that the Python heap's peak stays below `targets.memory_bound()` (tracemalloc). Each process's
RSS high-water mark (VmHWM) is reported beside inputs per second, and atheris also stops at an
RSS limit derived from the same bound. A crashing input is written to build/fuzz/.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Nothing of `replicator` is imported at module level: the atheris worker must import it
# inside atheris.instrument_imports() for coverage feedback.

PER_INPUT_SECONDS = 5.0
SAMPLE_EVERY = 64  # inputs between two tracemalloc-measured ones in a full run
CRASH_DIR = Path("build/fuzz")
TARGET_NAMES = ("frames", "ops", "codec", "manifest", "control")


class FuzzFailure(AssertionError):
    """An input broke an invariant: an exception other than ProtocolError, a hang, memory."""


def _modules() -> tuple[ModuleType, ModuleType]:
    from tests.fuzz import inputs, targets

    return inputs, targets


def checked_call(target: Callable[[bytes], None], data: bytes, *, measure: bool,
                 bound: int) -> None:
    """Run `target(data)` under the harness's per-input invariants: `bound` is the heap peak
    it may reach when `measure`d."""
    if measure:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        target(data)
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
        if measure:
            tracemalloc.stop()
    if elapsed > PER_INPUT_SECONDS:
        raise FuzzFailure(f"input of {len(data)} bytes took {elapsed:.1f} s (hang)")
    if peak >= bound:
        raise FuzzFailure(f"input of {len(data)} bytes allocated {peak} bytes at peak "
                          f"(bound {bound})")


# --- the mutation engine -----------------------------------------------------------------

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF,
                1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes],
           tokens: Sequence[bytes] = ()) -> bytes:
    """One to four stacked random edits of `data`; `tokens` are fragments worth inserting."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(9)
        pos = rng.randrange(len(out) + 1)
        if choice == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif choice == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3 and out:
            del out[pos : pos + rng.randint(1, 32)]
        elif choice == 4:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            out[pos : pos + width] = value.to_bytes(width, "little")
        elif choice == 5 and out:
            start = rng.randrange(len(out))
            out[pos:pos] = out[start : start + rng.randint(1, 64)]
        elif choice == 6:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out = out[:pos] + bytearray(other[cut:])
        elif choice == 7 and tokens:
            out[pos:pos] = rng.choice(tokens)
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


def mutation_fuzz(name: str, runs: int, *, seed: int = 0, sample_every: int = 1) -> int:
    """Run `runs` mutated inputs through target `name`; returns how many ran. A failing input
    is saved under build/fuzz/ and re-raised."""
    inputs, targets = _modules()
    target, corpus, bound = targets.TARGETS[name], inputs.seeds(name), targets.memory_bound()
    tokens = inputs.TOKENS[name]
    rng = random.Random(seed)
    for index in range(runs):
        data = (corpus[index] if index < len(corpus)
                else mutate(rng, rng.choice(corpus), corpus, tokens))
        try:
            checked_call(target, data, measure=index % sample_every == 0, bound=bound)
        except BaseException as exc:
            path = _save_crash(name, data)
            raise FuzzFailure(f"{name}: {type(exc).__name__}: {exc} (input in {path})") from exc
    return runs


def _save_crash(name: str, data: bytes) -> Path:
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    path = CRASH_DIR / f"crash-{name}-{data[:32].hex() or 'empty'}-{len(data)}"
    path.write_bytes(data)
    return path


# --- the atheris engine ------------------------------------------------------------------

def atheris_worker(name: str, runs: int, rss_limit_mb: int) -> None:
    import atheris  # type: ignore[import-not-found]

    with atheris.instrument_imports(include=["replicator"]):
        inputs, targets = _modules()
    target, counter, bound = targets.TARGETS[name], [0], targets.memory_bound()

    def one_input(data: bytes) -> None:
        counter[0] += 1
        checked_call(target, data, measure=counter[0] % SAMPLE_EVERY == 0, bound=bound)

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for index, seed in enumerate(inputs.seeds(name)):
        (corpus / f"seed-{index}").write_bytes(seed)
    dictionary = corpus.parent / f"{corpus.name}.dict"
    dictionary.write_text(inputs.libfuzzer_dict(name))
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-timeout={int(PER_INPUT_SECONDS) * 2}",
                   f"-rss_limit_mb={rss_limit_mb}", "-max_len=65536", "-print_final_stats=1",
                   f"-dict={dictionary}", f"-artifact_prefix={CRASH_DIR}/{name}-", str(corpus)],
                  one_input)
    atheris.Fuzz()


# --- the driver --------------------------------------------------------------------------

@dataclass
class Figures:
    target: str
    engine: str
    inputs: int
    seconds: float
    hwm_mb: float
    coverage: str  # libFuzzer's final "cov: N ft: N corp: N/size" (atheris only)
    failure: str


def run_target(name: str, engine: str, runs: int, rss_limit_mb: int) -> Figures:
    """One target in its own process, so each has its own RSS and crash."""
    command = [sys.executable, "-m", "tests.fuzz.run", "--worker", name, "--engine", engine,
               "--runs", str(runs), "--rss-limit-mb", str(rss_limit_mb)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    text = done.stdout + done.stderr
    count = re.search(r"(?:Done|stat::number_of_executed_units:)\s+(\d+)", text)
    hwm = re.search(r"VmHWM-MB (\d+(?:\.\d+)?)", text) or re.search(
        r"stat::peak_rss_mb:\s+(\d+)", text)
    coverage = re.findall(r"(cov: \d+ ft: \d+ corp: \d+/\S+)", text)
    failure = "" if done.returncode == 0 else text[-3000:]
    return Figures(name, engine, int(count.group(1)) if count else 0, seconds,
                   float(hwm.group(1)) if hwm else 0.0, coverage[-1] if coverage else "",
                   failure)


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES))
    parser.add_argument("--rss-limit-mb", type=int, default=0)
    parser.add_argument("--results", default="")
    parser.add_argument("--worker", default="")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.engine, args.runs, args.rss_limit_mb)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _has_atheris() else "mutate"
    rss_limit = args.rss_limit_mb or _default_rss_limit_mb()
    figures = []
    for name in args.targets.split(","):
        fig = run_target(name, engine, args.runs, rss_limit)
        figures.append(fig)
        rate = fig.inputs / fig.seconds if fig.seconds else 0.0
        print(f"{name:9} {engine:8} {fig.inputs:>9} inputs {fig.seconds:7.1f} s "
              f"{rate:8.0f}/s  peak RSS {fig.hwm_mb:.0f} MB  {fig.coverage}  "
              f"{'CRASH' if fig.failure else 'ok'}", flush=True)
        if fig.failure:
            print(fig.failure, file=sys.stderr)
    if args.results:
        _write_results(Path(args.results), figures, rss_limit)
    return 1 if any(f.failure for f in figures) else 0


def _worker(name: str, engine: str, runs: int, rss_limit_mb: int) -> int:
    if engine == "atheris":
        atheris_worker(name, runs, rss_limit_mb)
        return 0
    count = mutation_fuzz(name, runs, seed=int.from_bytes(os.urandom(4), "little"),
                          sample_every=SAMPLE_EVERY)
    print(f"Done {count} runs")
    print(f"VmHWM-MB {vm_hwm_mb():.1f}")
    return 0


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _default_rss_limit_mb() -> int:
    """RSS a fuzzing process may reach: the interpreter with atheris and a grown corpus
    (measured ~150 MB), plus the per-input bound of the targets, twice over."""
    return 256 + 2 * _modules()[1].memory_bound() // (1 << 20)


def _write_results(path: Path, figures: list[Figures], rss_limit: int) -> None:
    targets = _modules()[1]
    lines = [
        "# Fuzz figures",
        "",
        f"`make fuzz` on {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; max_frame_bytes {targets.MAX_FRAME_BYTES}, per-input heap "
        f"bound {targets.memory_bound()} bytes (tracemalloc, every {SAMPLE_EVERY}th input), "
        f"RSS limit {rss_limit} MB, per-input time bound {PER_INPUT_SECONDS} s.",
        "",
        "| target | engine | inputs | seconds | inputs/s | peak RSS MB | final coverage | result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for f in figures:
        rate = f.inputs / f.seconds if f.seconds else 0.0
        lines.append(f"| {f.target} | {f.engine} | {f.inputs} | {f.seconds:.0f} | {rate:.0f} | "
                     f"{f.hwm_mb:.0f} | {f.coverage or '-'} | {'crash' if f.failure else 'ok'} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
