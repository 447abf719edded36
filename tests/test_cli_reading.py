"""`tome chat --file/--url` through typer's CliRunner with a tiny model: a document that fits
goes into the prompt whole (its token count, by transformers' tokenizer, is within the
prompt, and the second question reuses it from the prefix cache), a long one is answered
from retrieved passages, and each unreadable file or URL costs one "error:" line."""

import re

import pytest
from typer.testing import CliRunner

from tome.assistant.assembly import assemble
from tome.cli import app
from tome.loader.tokenizer import Tokenizer
from tome.terminal_reading import reading_footer, reading_sources

SMALL_KV = ["--kv-cache-memory", "32MiB"]
TINY_WINDOW = 1024  # max_position_embeddings of conftest's tiny models
MODE_LINE = re.compile(
    r"^\[(full document|retrieval · (\d+) passages?) · ([\d,]+) / ([\d,]+) tokens "
    r"· ([\d,]+) cached\]$",
    re.MULTILINE,
)
COLOURS = ["amber", "basalt", "cobalt", "damask", "ember", "fennel", "garnet", "hazel"]
STORY = (
    "Mara kept the lighthouse on the northern cape for eleven winters. Every evening she "
    "climbed the spiral stair, trimmed the wick and wrote the weather in a green ledger. "
    "Ships that passed signalled twice; she answered with the lamp."
)


def chapter(number: int, colour: str) -> str:
    """A chapter about one colour; no other chapter names it."""
    sentences = [
        f"In this chapter the keeper finds the {colour} lantern behind the {colour} door.",
        f"The {colour} lantern burns with a {colour} flame that sailors fear.",
        "She waits for the storm to pass and counts the waves against the rocks.",
    ]
    return f"## Chapter {number}\n\n" + " ".join(sentences * 6)


def novel() -> str:
    chapters = [chapter(number, colour) for number, colour in enumerate(COLOURS, start=1)]
    return "# The Keeper\n\n" + "\n\n".join(chapters)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def chat(runner, model, *args: str, questions: list[str]):
    command = ["chat", "--model", str(model), "--max-tokens", "4", "--temperature", "0"]
    return runner.invoke(app, [*command, *SMALL_KV, *args], input="\n".join(questions) + "\n")


def mode_lines(output: str) -> list[re.Match]:
    return list(MODE_LINE.finditer(output))


def number(text: str) -> int:
    return int(text.replace(",", ""))


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_document_that_fits_is_read_whole(runner, tiny_llama, hf_tokenizer, tmp_path):
    path = tmp_path / "keeper.txt"
    path.write_text(STORY)
    document_tokens = len(hf_tokenizer.encode(STORY, add_special_tokens=False))
    result = chat(runner, tiny_llama, "--file", str(path), questions=["Who is Mara?", "Why?"])
    assert result.exit_code == 0, result.output
    first, second = mode_lines(result.stdout)
    for line in (first, second):
        assert line.group(1) == "full document"
        assert number(line.group(4)) == TINY_WINDOW
        assert document_tokens < number(line.group(3)) < TINY_WINDOW
    # The second question starts with the same system message, the document whole in it.
    assert number(second.group(5)) >= document_tokens
    assert number(second.group(3)) > number(first.group(3))  # the first turn is in it too


def test_a_long_document_is_answered_from_passages(runner, tiny_llama, hf_tokenizer, tmp_path):
    path = tmp_path / "keeper.md"
    path.write_text(novel())
    assert len(hf_tokenizer.encode(novel())) > 512
    args = ["--file", str(path), "--max-model-len", "512"]
    result = chat(runner, tiny_llama, *args, questions=["Where is the cobalt lantern?"])
    assert result.exit_code == 0, result.output
    (line,) = mode_lines(result.stdout)
    assert line.group(1).startswith("retrieval")
    assert number(line.group(2)) >= 1
    assert number(line.group(3)) <= 512 - 4
    assert number(line.group(4)) == 512


def test_the_footer_lists_the_passages_an_answer_cites(hf_tokenizer, tmp_path):
    path = tmp_path / "keeper.md"
    path.write_text(novel())
    (source,) = reading_sources([path], [])
    tokenizer = Tokenizer(hf_tokenizer, frozenset({hf_tokenizer.eos_token_id}))
    question = "Where does the keeper find the cobalt lantern and the garnet flame?"
    prompt = assemble([source], [], question, tokenizer, window_tokens=900, answer_budget=100)
    assert prompt.mode == "retrieval"
    answer = "Behind the door [1], with a flame [1, 2]; see also [99]."
    mode, *cited = reading_footer(prompt, answer, cached_tokens=0, window_tokens=900)
    assert mode.startswith(f"[retrieval · {len(prompt.citations)} passages · ")
    assert [line.split()[0] for line in cited] == ["[1]", "[2]"]
    chapters = {f"Chapter {COLOURS.index(c) + 1}" for c in ("cobalt", "garnet")}
    for line in cited:
        assert line.split()[1:3] == ["The", "Keeper,"]
        assert line.rsplit(", ", 1)[1] in chapters


def test_several_sources_are_read_together(runner, tiny_llama, tmp_path):
    first, second = tmp_path / "one.txt", tmp_path / "two.md"
    first.write_text(STORY)
    second.write_text("# Notes\n\nThe ledger is green.")
    args = ["--file", str(first), "--file", str(second)]
    result = chat(runner, tiny_llama, *args, questions=["What colour is the ledger?"])
    assert result.exit_code == 0, result.output
    (line,) = mode_lines(result.stdout)
    assert line.group(1) == "full document"


def test_a_missing_file_is_one_error_line(runner, tiny_llama, tmp_path):
    missing = tmp_path / "nothing.pdf"
    result = chat(runner, tiny_llama, "--file", str(missing), questions=["hi"])
    assert_one_error_line(result, "nothing.pdf", "no such file")


def test_a_corrupt_pdf_is_one_error_line(runner, tiny_llama, tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\ntruncat")
    result = chat(runner, tiny_llama, "--file", str(path), questions=["hi"])
    assert_one_error_line(result, "broken.pdf")


def test_an_unsupported_file_is_one_error_line(runner, tiny_llama, tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = chat(runner, tiny_llama, "--file", str(path), questions=["hi"])
    assert_one_error_line(result, "picture.png")


def test_an_unreachable_url_is_one_error_line(runner, tiny_llama):
    result = chat(runner, tiny_llama, "--url", "http://127.0.0.1:9/", questions=["hi"])
    assert_one_error_line(result, "127.0.0.1")


def test_system_cannot_go_with_sources(runner, tiny_llama, tmp_path):
    path = tmp_path / "keeper.txt"
    path.write_text(STORY)
    result = chat(runner, tiny_llama, "--file", str(path), "--system", "Be brief.", questions=[])
    assert_one_error_line(result, "--system")


def test_a_question_too_long_is_one_error_and_the_chat_goes_on(runner, tiny_llama, tmp_path):
    path = tmp_path / "keeper.txt"
    path.write_text(STORY)
    too_long = "lantern " * 3000
    result = chat(runner, tiny_llama, "--file", str(path), questions=[too_long, "Who is Mara?"])
    assert result.exit_code == 0, result.output
    assert "error:" in result.output and "question alone" in result.output
    assert len(mode_lines(result.stdout)) == 1
