"""`tome bench context`: the second question on a document finds it in the prefix cache and
the named-context question uses the pinned copy. No timing assertions."""

from typer.testing import CliRunner

from tome import LLM
from tome.bench.context_reuse import run_context_reuse
from tome.cli import app


def test_second_question_reuses_the_document(tiny_llama):
    llm = LLM(str(tiny_llama), kv_cache_memory=8 << 20)
    result = run_context_reuse(llm, document_tokens=200)
    assert result.second_cached_tokens == 200 // 16 * 16
    assert min(result.first_ttft, result.second_ttft, result.named_ttft) > 0
    assert llm.list_contexts() == []


def test_cli_prints_the_table(tiny_llama):
    result = CliRunner().invoke(
        app,
        ["bench", "context", "--model", str(tiny_llama), "--document-tokens", "100"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "second question (prefix cache: 96 tokens cached)" in result.output
