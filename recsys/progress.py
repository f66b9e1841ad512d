"""Progress of long loops: a tqdm bar (with ETA) on a terminal, a periodic one-line log record otherwise.

Nightly jobs write to files, where a bar's carriage returns are noise; notebooks and terminals want the bar. Both
go through :func:`progress`, so every long loop (scoring, implicit fits, EASE, LM encoding, downloads) reports the
same way.
"""

from __future__ import annotations

import logging
import os
import sys
import time

__all__ = ["Progress", "progress"]

log = logging.getLogger("recsys.progress")


class Progress:
    """A counter toward ``total`` reported as a bar (terminal) or a log line every ``every_s`` seconds.

    Args:
        total: units expected (None when unknown).
        desc: what is counted, e.g. ``"scoring users"``.
        unit: the unit's name.
        every_s: seconds between log lines when not on a terminal.
        bar: force the bar on or off (None: a bar when stderr is a terminal and RECSYS_PROGRESS is not ``log``).
        enabled: False counts silently (a caller's own ``progress=False`` option), as RECSYS_PROGRESS=off does.

    A ``unit`` of ``"B"`` (bytes, e.g. a download) is shown scaled: KiB/MiB on the bar, MiB in log lines.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_s: float = 30.0,
                 bar: bool | None = None, enabled: bool = True) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.t0 = 0, time.perf_counter()
        self._last = self.t0
        mode = os.environ.get("RECSYS_PROGRESS", "auto")
        if mode == "off" or not enabled:
            bar, self._silent = False, True
        else:
            self._silent = False
        if bar is None:
            bar = mode != "log" and sys.stderr.isatty()
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, **scaled)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if not self._silent and now - self._last >= self.every_s:
            self._last = now
            log.info(self._line(now))

    def _line(self, now: float) -> str:
        elapsed = now - self.t0
        if self.unit == "B":
            done, unit = f"{self.n / 2**20:.1f}", "MiB"
            total = f"{self.total / 2**20:.1f}" if self.total else None
        else:
            done, unit, total = str(self.n), self.unit, str(self.total) if self.total else None
        if self.total:
            frac = self.n / self.total
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            return (f"{self.desc}: {done}/{total} {unit} ({100 * frac:.0f}%), {elapsed:.0f} s elapsed, "
                    f"ETA {eta:.0f} s")
        return f"{self.desc}: {done} {unit}, {elapsed:.0f} s elapsed"

    def close(self) -> None:
        """Finish the bar (the log mode says nothing more: the caller reports the result)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", **kwargs) -> Progress:
    """A :class:`Progress` (use as a context manager and call ``update(n)``)."""
    return Progress(total, desc, unit, **kwargs)
