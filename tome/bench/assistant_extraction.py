"""Extraction throughput: books written at run time, read back through `extract` as an upload
is, timed from the file on disk to the `Document`."""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tome.assistant.documents import extract
from tome.bench.assistant_books import write_epub, write_pdf


@dataclass(frozen=True)
class ExtractionResult:
    name: str  # "English PDF"
    unit: str  # what a section of it is: "pages", "chapters"
    file_bytes: int
    sections: int
    text_chars: int
    seconds: float

    @property
    def sections_per_second(self) -> float:
        return self.sections / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.file_bytes / 1e6 / self.seconds


def run_extraction(pdf_pages: int, epub_megabytes: float, seed: int = 0) -> list[ExtractionResult]:
    """An English and a Chinese PDF of `pdf_pages` pages and an EPUB of about
    `epub_megabytes` MB, each extracted once."""
    books: list[tuple[str, str, str, Callable[[Path], None]]] = [
        ("English PDF", "pages", "english.pdf", lambda p: write_pdf(p, pdf_pages, "en", seed)),
        ("Chinese PDF", "pages", "chinese.pdf", lambda p: write_pdf(p, pdf_pages, "zh", seed)),
        ("EPUB", "chapters", "book.epub", lambda p: write_epub(p, epub_megabytes, seed)),
    ]
    with tempfile.TemporaryDirectory(prefix="tome-bench-") as folder:
        results = []
        for name, unit, filename, write in books:
            path = Path(folder) / filename
            write(path)
            results.append(_timed_extraction(name, unit, path))
        return results


def _timed_extraction(name: str, unit: str, path: Path) -> ExtractionResult:
    start = time.perf_counter()
    document = extract(path)
    seconds = time.perf_counter() - start
    return ExtractionResult(
        name, unit, path.stat().st_size, len(document.sections), len(document.text), seconds
    )
