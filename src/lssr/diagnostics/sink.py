"""Where the monitor's rows go: a CSV file (appended and fsynced in ``<csv>.partial``, renamed onto ``csv`` at the
end, cut back to a checkpoint's rows on resume) and/or a callback called with each row (a dict)."""

from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import LssrError
from ..io import CsvLog


class RowSink:
    """Records rows: ``csv`` (a path or None) and ``callback`` (or None); :attr:`last` is the last row."""

    def __init__(self, csv: str | os.PathLike | None = None, callback: Callable[[dict], Any] | None = None):
        self.csv = CsvLog(csv, []) if csv is not None else None
        self.callback = callback
        self.last: dict | None = None
        self._offset: int | None = None  # from a checkpoint: cut the partial file back to it
        self._ready = False

    def emit(self, row: dict) -> None:
        """Writes ``row`` to the CSV (fsynced), then calls the callback with it."""
        if self.csv is not None:
            self._write(row)
        if self.callback is not None:
            self.callback(row)
        self.last = row

    def _open(self, row: dict) -> None:
        log = self.csv
        if not log.columns:
            log.columns = list(row)
        if self._offset is None:
            log.reset()  # a fresh run: no rows of an earlier one
        else:
            if not log.partial.exists() and log.path.exists():
                os.replace(log.path, log.partial)  # resumed after close(): continue the closed file
            log.truncate(self._offset)  # resumed: the checkpoint's rows only
        self._ready = True

    def _write(self, row: dict) -> None:
        log = self.csv
        if not self._ready:
            self._open(row)
        if list(row) != log.columns:
            raise LssrError(f"SharpnessMonitor: row columns changed; the CSV {log.path} has {log.columns[:4]}...")
        log.append(row)
        self._offset = log.flush()

    def state_dict(self) -> dict:
        """The last row, the CSV's columns and byte offset."""
        return {
            "last": self.last,
            "csv_columns": list(self.csv.columns) if self.csv is not None else None,
            "csv_offset": self._offset,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`: the CSV is cut back to the checkpoint's rows at the next row."""
        self.last = state["last"]
        if self.csv is not None:
            self.csv.close()
            self.csv.columns = list(state["csv_columns"] or [])
            self._offset = state["csv_offset"]
            self._ready = False

    def close(self) -> None:
        """Finishes the CSV: renames ``<csv>.partial`` onto ``csv`` (atomic). A later row reopens it."""
        if self.csv is not None and self._ready:
            self.csv.finalize()
            self._ready = False
