"""Run benchmark suites into one CSV (written row by row) and a Markdown summary.

    python -m flopscale.benchmarks.run [--quick] [--only matmul,attention,...] [--out DIR]
    python -m flopscale.benchmarks.run --markdown-from CSV     # rebuild the .md beside a CSV

is the same as ``flopscale bench``.  A suite that fails ends as an error row and the next
suite runs.  ``FLOPSCALE_BENCH_TIME_LIMIT_S`` (seconds) stops starting new rows once that
much time has passed (the rest are listed as skipped), so a run under an outer ``timeout``
still ends by itself and writes both tables; SIGTERM also ends the run with both tables
(``header["terminated"]`` is then True and the command exits 143, as after Ctrl-C it exits 130).

Tables are never overwritten: a run takes ``<card>-<date>.csv``/``.md`` if neither exists,
else ``<card>-<date>-2``, ``-3``, ... (the CSV is created exclusively, so concurrent runs
get different names), and a run that ends before its first row leaves no file.
"""
from __future__ import annotations

import csv
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .harness import COLUMNS, WIDTHS, Context, CsvSink, environment, format_row, header_line, markdown

# seconds per provider for the timed repetitions (after warm-up); --quick uses less
TIME_BUDGET_S = 0.5
TIME_BUDGET_QUICK_S = 0.3


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives (an outer timeout).  A BaseException, like
    KeyboardInterrupt, so that the per-provider ``except Exception`` handlers let it through."""


def _time_limit_s() -> float | None:
    raw = os.environ.get("FLOPSCALE_BENCH_TIME_LIMIT_S", "").strip()
    if not raw:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if v > 0 else None

SUITES = ("matmul", "attention", "blocksparse", "overhead", "lawfit", "collectives")
# what runs without --only; collectives (several processes under torchrun) only with --only collectives
DEFAULT_SUITES = ("matmul", "attention", "blocksparse", "overhead", "lawfit")
GPU_SUITES = ("matmul", "attention", "blocksparse")


def card_slug() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        for key in ("h200", "h100", "a100", "b200", "l40s", "l4", "4090"):
            if key in name:
                return key
        return "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return "cpu"


def suite_size(name: str, ctx: Context) -> int | None:
    """Rows a suite will yield, when its module says so (``expected_rows(ctx)``), else None."""
    try:
        mod = importlib.import_module(f"flopscale.benchmarks.bench_{name}")
        fn = getattr(mod, "expected_rows", None)
        return int(fn(ctx)) if fn is not None else None
    except Exception:  # noqa: BLE001 - a count is only for the progress line
        return None


def claim_table(out: Path, stem: str, limit: int = 10_000) -> tuple[Path, Path, CsvSink]:
    """The first free ``stem``, ``stem-2``, ``stem-3``, ... in ``out`` (neither .csv nor .md there);
    the CSV is created exclusively, so two runs never get the same name."""
    for i in range(1, limit + 1):
        s = stem if i == 1 else f"{stem}-{i}"
        csv_path, md_path = out / f"{s}.csv", out / f"{s}.md"
        if md_path.exists() or csv_path.exists():
            continue
        try:
            return csv_path, md_path, CsvSink(csv_path)
        except FileExistsError:
            continue
    raise FileExistsError(f"{limit} tables named {stem}* already in {out}")


class Progress:
    """Rows done / total (when the suites declare their sizes) and an ETA, as one line of text."""

    def __init__(self, names: list[str], sizes: dict[str, int | None]) -> None:
        self.names = names
        self.sizes = sizes
        self.total = sum(sizes.values()) if all(v is not None for v in sizes.values()) else None  # type: ignore[misc]
        self.rows = 0
        self.suites_done = 0
        self.t0 = time.perf_counter()

    def line(self, suite: str) -> str:
        elapsed = time.perf_counter() - self.t0
        k = self.names.index(suite) + 1 if suite in self.names else self.suites_done
        eta = None
        if self.total:
            head = f"rows {self.rows}/{self.total}"
            if self.rows:
                eta = elapsed / self.rows * max(self.total - self.rows, 0)
        else:
            head = f"rows {self.rows}"
            if self.suites_done:
                eta = elapsed / self.suites_done * (len(self.names) - self.suites_done)
        tail = f", ETA {_fmt_eta(eta)}" if eta is not None else ""
        return f"{head} (suite {suite} {k}/{len(self.names)}, {_fmt_eta(elapsed)} elapsed{tail})"


def _fmt_eta(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def suite_rows(name: str, ctx: Context) -> Iterator[dict]:
    mod = importlib.import_module(f"flopscale.benchmarks.bench_{name}")
    if name == "lawfit":
        yield from _lawfit_rows(mod, ctx)
    else:
        yield from mod.rows(ctx)


def _lawfit_rows(mod, ctx: Context) -> Iterator[dict]:
    """The lawfit benchmark reports its own rows; map them onto the table's columns."""
    try:
        results = mod.run(quick=ctx.quick)
    except (OSError, LookupError) as exc:  # its data set could not be read
        yield {"suite": "lawfit", "op": "chinchilla_fit", "dtype": "fp64", "pass": "-", "provider": "-",
               "status": "skipped", "note": f"benchmark data not available: {type(exc).__name__}: {exc}"}
        return
    for r in results:
        t = r.get("time_s")
        yield {
            "suite": "lawfit",
            "op": r.get("op", "fit"),
            "shape": r.get("shape", ""),
            "dtype": "fp64",
            "pass": "-",
            "provider": r.get("provider"),
            "status": r.get("status", "ok"),
            "median_ms": t * 1e3 if isinstance(t, (int, float)) else None,
            "reps": r.get("reps", 1),
            "speedup": r.get("speedup"),
            "rel_err": r.get("rel_err"),
            "note": r.get("note", ""),
        }


def run(
    only: list[str] | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    echo: Callable[[str], None] | None = print,
) -> tuple[list[dict], dict, Path | None, Path | None]:
    """Run the suites; return (rows, environment header, csv path, markdown path).

    ``only``: suite names (None: the default set; an empty list is refused).  ``progress``
    gets one line of text per event (suite start, every row: rows done / total, ETA).
    The paths are None when no table was written (no ``out``, or no row before the end).
    """
    if only is not None and not list(only):
        raise ValueError("no suite selected")
    names = list(only or DEFAULT_SUITES)
    t_start = time.perf_counter()
    limit_s = _time_limit_s()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = Context(device=device, quick=quick, time_budget_s=TIME_BUDGET_QUICK_S if quick else TIME_BUDGET_S)
    ctx.out_dir = out  # suites that write files of their own (collectives) put them beside the table
    ceiling_note = None
    if device == "cuda":
        from flopscale.profiler import devices

        try:
            if progress:
                progress("measuring ceilings (profiler.calibrate) ...")
            ctx.ceilings = devices.calibrate()
        except Exception as exc:  # noqa: BLE001 - fall back to the datasheet, say so in the header
            ceiling_note = f"calibration failed ({type(exc).__name__}: {str(exc)[:160]}); %ceil uses the datasheet peaks"
            try:
                ctx.ceilings = devices.Ceilings.from_spec(devices.current_spec())
            except Exception:  # noqa: BLE001
                ctx.ceilings = None
    header = environment()
    header["command"] = "flopscale bench" + (" --quick" if quick else "") + (f" --only {','.join(names)}" if only else "")
    if ctx.ceilings is not None:
        bw = ctx.ceilings.bandwidth
        kind = "measured" if ctx.ceilings.source == "measured" else "datasheet"
        header["ceilings"] = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ctx.ceilings.flops.items()) + \
            (f"; copy {bw / 1e12:.2f} TB/s" if bw else "") + f" ({kind}: {ctx.ceilings.label})"
    if ceiling_note:
        header["ceilings_note"] = ceiling_note
    header["time_budget_per_provider_s"] = ctx.time_budget_s
    if limit_s:
        header["time_limit_s"] = limit_s
    csv_path = md_path = None
    sink = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        csv_path, md_path, sink = claim_table(out, f"{card_slug()}-{time.strftime('%Y-%m-%d')}")
    rows: list[dict] = []
    tracker = Progress(names, {n: suite_size(n, ctx) for n in names}) if progress else None

    def emit(row: dict) -> None:
        rows.append(row)
        if sink:
            sink.write(row)
        if echo:
            echo(format_row(row, WIDTHS))
        if tracker is not None:
            tracker.rows += 1
            progress(tracker.line(str(row.get("suite", ""))))

    def over_time() -> bool:
        return limit_s is not None and time.perf_counter() - t_start > limit_s

    if echo:
        echo(header_line(WIDTHS))
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):  # noqa: ARG001
            raise _Terminated("SIGTERM")

        try:
            old_handler = signal.signal(signal.SIGTERM, _on_term)
        except (ValueError, OSError):
            old_handler = None
    try:
        for name in names:
            if over_time():
                emit({"suite": name, "op": "-", "provider": "-", "status": "skipped",
                      "note": f"time limit of {limit_s:g} s reached before this suite"})
                continue
            if progress:
                progress(f"suite {name} ...")
            t0 = time.perf_counter()
            gen = suite_rows(name, ctx)
            try:
                for row in gen:
                    emit(row)
                    if over_time():
                        emit({"suite": name, "op": "-", "provider": "-", "status": "skipped",
                              "note": f"time limit of {limit_s:g} s reached: the rest of this suite was not run"})
                        break
            except (KeyboardInterrupt, _Terminated):
                raise
            except Exception as exc:  # noqa: BLE001 - one failing suite must not end the run
                text = str(exc).strip()
                emit({"suite": name, "op": "-", "provider": "-", "status": "error",
                      "note": f"suite stopped: {type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"})
                _settle_cuda()
            finally:
                gen.close()
            if tracker is not None:
                tracker.suites_done += 1
            if progress:
                progress(f"suite {name} done in {time.perf_counter() - t0:.1f} s")
        header["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    except _Terminated:
        header["finished"] = "terminated (SIGTERM): the table holds the rows that finished"
        header["terminated"] = True
    finally:
        if old_handler is not None:
            try:
                signal.signal(signal.SIGTERM, old_handler)
            except (ValueError, OSError):
                pass
        if sink:
            sink.close()
            if sink.rows == 0:  # nothing finished: no header-only table, no empty summary
                csv_path = md_path = None
        if md_path is not None:
            # written whatever happens, from the rows that finished
            header_end = dict(header)
            if "finished" not in header_end:
                header_end["finished"] = "interrupted: the table holds the rows that finished"
            from .harness import nvml_snapshot

            try:
                header_end["at end"] = nvml_snapshot()
            except Exception:  # noqa: BLE001
                pass
            tmp = md_path.with_suffix(".md.tmp")
            tmp.write_text(markdown(rows, header_end))
            tmp.replace(md_path)
    return rows, header, csv_path, md_path


def _settle_cuda() -> None:
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a broken context shows up in the next rows
            pass


def markdown_from_csv(csv_path: Path, md_path: Path | None = None, note: str = "") -> Path:
    """Write the Markdown table for the rows of a benchmark CSV (e.g. after a run was killed)."""
    csv_path = Path(csv_path)
    md_path = Path(md_path) if md_path is not None else csv_path.with_suffix(".md")
    with open(csv_path, newline="") as fh:
        rows = []
        for r in csv.DictReader(fh):
            row: dict = {}
            for k in COLUMNS:
                v = r.get(k, "")
                if v in ("", None):
                    continue
                try:
                    row[k] = float(v) if k not in ("suite", "op", "shape", "dtype", "pass", "provider", "status",
                                                    "note", "reps") else v
                except ValueError:
                    row[k] = v
            rows.append(row)
    header = {"source": f"rebuilt from {csv_path.name}", "rows": len(rows)}
    if note:
        header["note"] = note
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown(rows, header))
    tmp.replace(md_path)
    return md_path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flopscale.benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None)
    p.add_argument("--out", default="flopscale-bench")
    p.add_argument("--markdown-from", default=None, metavar="CSV",
                   help="only rebuild the Markdown table beside CSV (for a run that was killed)")
    a = p.parse_args(argv)
    if a.markdown_from:
        print(markdown_from_csv(Path(a.markdown_from), note="the run did not finish; rows as written"))
        return 0
    only = [x.strip() for x in a.only.split(",") if x.strip()] if a.only is not None else None
    if only is not None and not only:
        p.error("--only names no suite")
    _rows, header, _c, _m = run(only, a.quick, Path(a.out), progress=lambda m: print(m, file=sys.stderr))
    return 128 + signal.SIGTERM if header.get("terminated") else 0


if __name__ == "__main__":
    sys.exit(main())
