"""`tome bench assistant`: the reading assistant's benchmark in one run. Extraction throughput
of books written at run time, retrieval over a long Chinese book, and the time to first
token of a follow-up question on a document the prefix cache already holds."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tome.cli_options import (
    DtypeOption,
    KVMemoryOption,
    ModelOption,
    QuantizationOption,
    QuantizeHeadOption,
    engine_config,
)
from tome.errors import InvalidRequestError, TomeError

console = Console()
err_console = Console(stderr=True)


def bench_assistant(
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    kv_cache_memory: KVMemoryOption = None,
    quantization: QuantizationOption = None,
    quantize_head: QuantizeHeadOption = True,
    pdf_pages: Annotated[int, typer.Option(help="Pages of each PDF (English, Chinese).")] = 300,
    epub_mb: Annotated[float, typer.Option(help="Size of the EPUB file in MB.")] = 1.0,
    chinese_chars: Annotated[
        int, typer.Option(help="Characters of the Chinese book searched.")
    ] = 2_000_000,
    document_tokens: Annotated[
        int, typer.Option(help="Tokens of the document asked about twice.")
    ] = 4000,
    answer_tokens: Annotated[int, typer.Option(help="Most tokens of each answer.")] = 8,
    out: Annotated[Path | None, typer.Option(help="A folder for bench_assistant.json.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Append the table as Markdown.")] = None,
) -> None:
    """Extraction pages/s and MB/s, retrieval build and query times, follow-up TTFT."""
    from tome import LLM
    from tome.bench.assistant_extraction import run_extraction
    from tome.bench.assistant_follow_up import run_follow_up
    from tome.bench.assistant_report import (
        extraction_rows,
        follow_up_rows,
        markdown_table,
        print_rows,
        retrieval_rows,
        write_json,
    )
    from tome.bench.assistant_retrieval import run_retrieval

    options = {
        "model": model,
        "pdf_pages": pdf_pages,
        "epub_mb": epub_mb,
        "chinese_chars": chinese_chars,
        "document_tokens": document_tokens,
        "answer_tokens": answer_tokens,
    }
    try:
        _check_sizes(pdf_pages, epub_mb, chinese_chars, document_tokens, answer_tokens)
        config = engine_config(  # checked before the slow extraction
            model,
            dtype,
            None,
            kv_cache_memory,
            quantization=quantization,
            quantize_head=quantize_head,
        )
        with console.status("extracting the PDFs and the EPUB"):
            rows = extraction_rows(run_extraction(pdf_pages, epub_mb))
        with console.status("loading the model"):
            batch = max(document_tokens + 1024, 8192)  # each prompt prefilled in one step
            llm = LLM(**{**vars(config), "max_num_batched_tokens": batch})
        with console.status(f"chunking, indexing and searching {chinese_chars:,} characters"):
            rows += retrieval_rows(run_retrieval(llm.tokenizer, chinese_chars))
        with console.status(f"two questions on a {document_tokens:,}-token document"):
            rows += follow_up_rows(run_follow_up(llm, document_tokens, answer_tokens))
    except TomeError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    print_rows(rows, console)
    if out is not None:
        console.print(f"wrote {write_json(rows, options, out)}")
    if markdown is not None:
        with markdown.open("a", encoding="utf-8") as file:
            file.write(markdown_table(rows) + "\n")


def _check_sizes(
    pdf_pages: int, epub_mb: float, chinese_chars: int, document_tokens: int, answer_tokens: int
) -> None:
    for name, value in [
        ("--pdf-pages", pdf_pages),
        ("--epub-mb", epub_mb),
        ("--chinese-chars", chinese_chars),
        ("--document-tokens", document_tokens),
        ("--answer-tokens", answer_tokens),
    ]:
        if value <= 0:
            raise InvalidRequestError(f"{name} must be positive, got {value}")
