"""`tome chat --file PATH --url URL`: the server's prompt assembly in the terminal. Files are
extracted and pages fetched once, at start; each question is then assembled (documents whole
when they fit the window, cited passages when not), streamed, and followed by a dim line
with the mode, the window used and the cached tokens, and the sources the answer cited.
The sources' passage index is built on the first question that needs it and kept for the
session."""

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from rich.console import Console

from tome.assistant.assembly import AssembledPrompt, assemble
from tome.assistant.documents import DocumentError, extract
from tome.assistant.retrieval import Embedder, SourceText, cited_numbers
from tome.assistant.retrieval.index_cache import IndexCache
from tome.assistant.retrieval.sentence_embedder import SentenceEmbedder
from tome.assistant.sources_of import source_of_document, source_of_page
from tome.assistant.web import WebConfig, fetch_url
from tome.engine.engine import Engine
from tome.engine.sampling_params import SamplingParams
from tome.errors import InvalidRequestError
from tome.terminal_chat import Message, Reply, stream_answer


def reading_sources(
    files: Sequence[Path],
    urls: Sequence[str],
    system: str | None = None,
    web: WebConfig | None = None,
) -> list[SourceText]:
    """Every file extracted and every page fetched, files first, each in the order given.
    Raises a DocumentError or WebError naming the one that failed, and refuses `system`
    beside sources: assembly writes the system message itself."""
    if system and (files or urls):
        raise InvalidRequestError(
            "--system cannot go with --file or --url: the reading assistant writes its own"
        )
    web = web or WebConfig()
    return [*(_file_source(path) for path in files), *(_page_source(url, web) for url in urls)]


def reading_embedder(
    embedding_model: str | None, sources: Sequence[SourceText]
) -> SentenceEmbedder | None:
    """The embedder for retrieval, refused without sources to retrieve from; made before
    the model loads, so a missing sentence-transformers fails at once."""
    if embedding_model is None:
        return None
    if not sources:
        raise InvalidRequestError("--embedding-model needs --file or --url to read")
    return SentenceEmbedder(embedding_model)


def reading_reply(
    engine: Engine,
    params: SamplingParams,
    sources: Sequence[SourceText],
    console: Console,
    embedder: Embedder | None = None,
) -> Reply:
    """Answers each question over `sources`, assembled as the server assembles it, with
    one passage index (fused with `embedder`'s vectors when given) for the session."""
    index_cache = IndexCache(embedder=embedder)
    return partial(_reading_answer, engine, params, list(sources), console, index_cache)


def reading_footer(
    prompt: AssembledPrompt, answer: str, cached_tokens: int, window_tokens: int
) -> list[str]:
    """`[full document · 3,412 / 8,192 tokens · 3,300 cached]` (or `[retrieval · 5 passages
    · ...]`), then `[n] Title, Section, p. 3` for each passage the answer cites."""
    used = f"{prompt.window_tokens_used:,} / {window_tokens:,} tokens · {cached_tokens:,} cached"
    if prompt.mode == "full":
        return [f"[full document · {used}]"]
    passages = len(prompt.citations)
    lines = [f"[retrieval · {passages} passage{'s' if passages != 1 else ''} · {used}]"]
    for number in cited_numbers(answer):
        if number in prompt.citations:
            lines.append(f"[{number}] {prompt.citations[number].label}")
    return lines


def _file_source(path: Path) -> SourceText:
    if not path.exists():
        raise DocumentError(f"{path}: no such file")
    if not path.is_file():
        raise DocumentError(f"{path}: not a file")
    try:
        document = extract(path)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot be read ({exc.strerror})") from exc
    return source_of_document(document, str(path))


def _page_source(url: str, web: WebConfig) -> SourceText:
    return source_of_page(fetch_url(url, web))


def _reading_answer(
    engine: Engine,
    params: SamplingParams,
    sources: list[SourceText],
    console: Console,
    index_cache: IndexCache,
    history: list[Message],
    question: str,
) -> str:
    prompt = assemble(
        sources,
        history,
        question,
        engine.tokenizer,
        window_tokens=engine.max_model_len,
        answer_budget=params.max_tokens,
        index_cache=index_cache,
    )
    output = stream_answer(engine, prompt.prompt_token_ids, params, console)
    for line in reading_footer(prompt, output.text, output.num_cached_tokens, engine.max_model_len):
        console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)
    return output.text
