"""The usage ledger's writer: requests hand their usage over without waiting; one
background thread writes it to the database in batches. A slow or briefly locked database
then never stalls a stream, and cancellation never loses a row."""

import logging
import queue
import threading

from tome.store.usage import UsageEntry, UsageStore

logger = logging.getLogger(__name__)
_STOP = None


class UsageLedger:
    def __init__(self, store: UsageStore) -> None:
        self.store = store
        self._queue: queue.Queue[UsageEntry | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tome-ledger", daemon=True)
        self._thread.start()

    def record(self, entry: UsageEntry) -> None:
        self._queue.put(entry)

    def close(self) -> None:
        """Write what is pending, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stopping = _STOP in batch
            entries = [entry for entry in batch if entry is not _STOP]
            if entries:
                self._write(entries)

    def _write(self, entries: list[UsageEntry]) -> None:
        try:
            self.store.record(entries)
        except Exception:  # the ledger must outlive a database hiccup; the log says what
            logger.exception("could not write %d usage records", len(entries))
