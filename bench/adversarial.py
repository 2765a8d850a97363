"""Hostile input against the analysis: milliseconds next to an ordinary letter
of the same size.

    python -m bench.adversarial                 # every input, 64 KB to 1 MB
    python -m bench.adversarial --sizes 65536   # one size
    python -m bench.adversarial --patterns      # also: growth of each pattern

Each input (`bench.hostile`) is parsed and judged by the content half of the
charter, in this process, as a worker does (the median of `--runs`); the
ordinary letter beside it has the same size and shape (a base64 body, a PDF
or a zip of the same size). Targets (issue 18): the worst case at most 5
times the ordinary letter, and no input up to 1 MB over 1 s.

`--patterns` times every compiled pattern of the `apiguard` modules on runs of
the pieces that make a backtracking pattern scan to the end of the text from
every start, at two sizes: a pattern whose time grows more than 8 times for
4 times the input is listed (some are only ever used anchored, with
`fullmatch`: they are listed too, and must be checked where they are used).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import pkgutil
import re
import statistics
import time
from collections.abc import Callable

from apiguard.analysis import analyse, content_half
from apiguard.app import build_charter
from apiguard.config import Settings
from apiguard.mail import Envelope
from bench import hostile

TARGET_RATIO = 5.0
TARGET_MS = 1000.0


def _analyser() -> Callable[[bytes], tuple[float, str]]:
    charter = content_half(build_charter(Settings()))
    envelope = Envelope(hostile.SENDER, (hostile.RECIPIENT,))

    def run(raw: bytes) -> tuple[float, str]:
        started = time.perf_counter()
        _, decision = analyse(charter, raw, envelope, time.time())
        elapsed = (time.perf_counter() - started) * 1000
        rules = ",".join(f.rule for f in decision.findings) or "-"
        return elapsed, f"{decision.verdict.value} {rules}"

    return run


def _cases(size: int) -> list[tuple[str, bytes, bytes]]:
    """(name, hostile message, ordinary message of the same size)."""
    ordinary = hostile.ordinary_letter(size)
    ordinary_html = hostile.ordinary_html(size)
    return [
        ('"cf cf cf" line', hostile.cf_letter(size), ordinary),
        ('",,,x cordialement" line', hostile.closing_letter(size), ordinary),
        ("header folded over tabs", hostile.folded_header_letter(size), ordinary),
        ("HPRIM city padded with spaces", hostile.postcode_letter(size), ordinary),
        ('HTML: "<" without ">"', hostile.html_open_brackets(size), ordinary_html),
        ("HTML: unclosed <script", hostile.html_unclosed_scripts(size), ordinary_html),
        ("HTML: nested tags", hostile.html_nested_tags(size), ordinary_html),
    ]


def _file_cases() -> list[tuple[str, bytes, bytes]]:
    cases = []
    for name, pdf in (
        ("PDF: 20 pages of 70 MB each", hostile.inflating_pdf()),
        ("PDF: 2 pages of 70 MB each", hostile.inflating_pdf(pages=2)),
        ("PDF: 5 object streams of 60 000", hostile.object_stream_pdf()),
        ("PDF: 5 object streams of 9 000", hostile.object_stream_pdf(objects_each=9_000)),
        ("PDF: 5 object streams of 1 000", hostile.object_stream_pdf(objects_each=1_000)),
    ):
        ordinary = hostile.pdf_letter(hostile.ordinary_pdf(len(pdf)))
        cases.append((name, hostile.pdf_letter(pdf), ordinary))
    for name, archive in (
        ("zip: 400 entries of 200 KB", hostile.wide_zip()),
        ("zip: 30 levels deep", hostile.deep_zip()),
    ):
        ordinary = hostile.pdf_letter(hostile.ordinary_pdf(len(archive)))
        cases.append((name, hostile.zip_letter(archive), ordinary))
    return cases


def _median(run: Callable[[bytes], tuple[float, str]], raw: bytes, runs: int) -> tuple[float, str]:
    results = [run(raw) for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[0][1]


def bench_messages(sizes: list[int], runs: int) -> bool:
    run = _analyser()
    run(hostile.ordinary_letter(4096))  # warm the caches (phrase book, imports)
    print(f"{'input':34} {'size':>8} {'hostile':>10} {'ordinary':>10} {'ratio':>6}  verdict")
    met = True
    cases = [case for size in sizes for case in _cases(size)] + _file_cases()
    for name, raw, ordinary in cases:
        spent, verdict = _median(run, raw, runs)
        usual, _ = _median(run, ordinary, runs)
        ratio = spent / usual if usual else float("inf")
        over = ratio > TARGET_RATIO or (len(raw) <= 1 << 20 and spent > TARGET_MS)
        met &= not over
        print(
            f"{name:34} {len(raw) / 1024:7.0f}K {spent:8.1f}ms {usual:8.1f}ms "
            f"{ratio:5.1f}x  {verdict}{'  <- over target' if over else ''}",
            flush=True,
        )
    print("targets met" if met else "targets NOT met")
    return met


_FRAGMENTS = [
    "cf ", "voir ", "<", "< a", "<script", "a", "A", "AB ", "1", "12 ", "1/", "-", " ", "\t",
    ".", "M. ", "DUPONT ", "Jean ", "a@", "@a.", "re ", "bonjour ", "bien ", "\n", ",", "(",
    "\\(", "né le ", "2A",
]  # fmt: skip


def _patterns() -> dict[str, re.Pattern[str] | re.Pattern[bytes]]:
    import apiguard

    found: dict[str, re.Pattern[str] | re.Pattern[bytes]] = {}
    for info in pkgutil.walk_packages(apiguard.__path__, "apiguard."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found[f"{info.name}.{name}"] = value
    return found


def _scan_time(pattern: re.Pattern[str] | re.Pattern[bytes], text: str) -> float:
    subject: str | bytes = text.encode("utf-8") if isinstance(pattern.pattern, bytes) else text
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _match in pattern.finditer(subject):  # type: ignore[arg-type]
            pass
        best = min(best, time.perf_counter() - started)
    return best


def bench_patterns(small: int = 4000) -> None:
    pieces = _FRAGMENTS + [a + b for a, b in itertools.product(_FRAGMENTS[:14], repeat=2)]
    print(f"\n{'pattern':58} {'piece':>14} {'4x input':>9} {'time':>9}")
    for name, pattern in _patterns().items():
        worst = (0.0, "", 0.0)
        for piece in pieces:
            for tail in ("", "!"):
                short = piece * (small // len(piece)) + tail
                first = _scan_time(pattern, short)
                if first > 0.5:
                    worst = (float("inf"), piece, first)
                    break
                long = piece * (4 * small // len(piece)) + tail
                second = _scan_time(pattern, long)
                growth = second / max(first, 2e-4)
                if second > 0.005 and growth > worst[0]:
                    worst = (growth, piece, second)
        if worst[0] > 8:
            print(f"{name:58} {worst[1]!r:>14} {worst[0]:8.1f}x {worst[2] * 1000:7.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64_000, 256_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--patterns", action="store_true")
    options = parser.parse_args()
    bench_messages(options.sizes, options.runs)
    if options.patterns:
        bench_patterns()


if __name__ == "__main__":
    main()
