"""Progress for long encodings: a tqdm bar when tqdm is installed (it renders as one widget in
notebooks), else one line on stderr rewritten at most twice a second."""

import sys
import time


class Progress:
    """Callable ``(done, total)`` for the native encoder."""

    def __init__(self, desc: str, enabled: bool):
        self._enabled = enabled
        self._bar = None
        self._last = 0.0
        self._desc = desc
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm  # optional

            self._bar = tqdm(desc=desc, unit="text")
        except ImportError:
            self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.5:
            return
        self._last = now
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{self._desc}: {done}/{total} texts{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
