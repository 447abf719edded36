"""The server's offline parts: `tome keys create|list|revoke` and `tome usage` through
typer's CliRunner on a SQLite file, `tome serve` refusing to run open off localhost, the
tiers TOML and its errors, and the arithmetic of the rate windows, the queue-wait
estimate and prices, against numbers worked out by hand."""

import pytest
from typer.testing import CliRunner

from tome.cli import app
from tome.errors import InvalidRequestError
from tome.server.admin import parse_since
from tome.server.errors import OverloadedError, ServerConfigError
from tome.server.limits import SlidingWindow
from tome.server.overload import QueueWaitEstimator
from tome.server.tiers import DEFAULT_TIERS, Prices, Tier, load_settings
from tome.store import Database, KeyStore, UsageEntry, UsageStore
from tome.store.models import utc_now


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tome.db'}"


def tome(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_error_line(result, *hints: str) -> None:
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for hint in hints:
        assert hint in lines[0]


def test_keys_create_list_revoke(database_url):
    created = tome(
        "keys", "create", "--tier", "pro", "--name", "alice", "--database-url", database_url
    )
    assert created.exit_code == 0, created.output
    key = created.output.split()[-1]
    store = KeyStore(Database(database_url))
    info = store.lookup(key)
    assert (info.name, info.tier, info.active) == ("alice", "pro", True)
    listed = tome("keys", "list", "--database-url", database_url)
    assert "alice" in listed.output
    assert info.prefix in listed.output
    assert key not in listed.output  # shown once, at creation
    assert tome("keys", "revoke", str(info.id), "--database-url", database_url).exit_code == 0
    assert not store.lookup(key).active
    assert [key.active for key in store.all()] == [False]


def test_keys_errors_are_one_line(database_url, tmp_path):
    result = tome("keys", "create", "--tier", "gold", "--database-url", database_url)
    assert_one_error_line(result, "unknown tier 'gold'", "free", "pro")
    assert_one_error_line(tome("keys", "revoke", "42", "--database-url", database_url), "42")
    bad = tmp_path / "tiers.toml"
    bad.write_text("[tiers.free]\nrequests_per_minut = 3\n")
    result = tome("keys", "list", "--config", str(bad), "--database-url", database_url)
    assert_one_error_line(result, "requests_per_minut")


def test_serve_refuses_to_run_open_off_localhost(database_url):
    result = tome("serve", "--host", "0.0.0.0", "--database-url", database_url)
    assert_one_error_line(result, "no API key", "127.0.0.1", "tome keys create")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--disk-kv-cache-dir", "kv"], "needs host_kv_cache_memory"),
        (["--host-kv-cache-memory", "lots"], "cannot read 'lots' as a size"),
    ],
)
def test_serve_kv_tier_flags_are_checked(database_url, flags, message):
    result = tome("serve", *flags, "--database-url", database_url)
    assert_one_error_line(result, message)


def test_usage_report_prices_cached_tokens_apart(database_url, tmp_path):
    config = tmp_path / "tiers.toml"
    config.write_text("[prices]\nprompt = 3.0\ncached_prompt = 1.0\ncompletion = 10.0\n")
    _, info = KeyStore(Database(database_url)).create("pro", "bob")
    usage = UsageStore(Database(database_url))
    usage.record([UsageEntry(info.id, "r1", "m", "chat", "finished", 1000, 400, 200)])
    result = tome("usage", "--config", str(config), "--database-url", database_url)
    assert result.exit_code == 0, result.output
    # 600 fresh x $3 + 400 cached x $1 + 200 completion x $10, per million tokens.
    assert "$0.0042" in result.output
    assert "bob" in result.output


def test_tiers_toml(tmp_path):
    path = tmp_path / "tiers.toml"
    path.write_text(
        'database_url = "sqlite:///x.db"\n[prices]\nprompt = 1\n'
        "[tiers.team]\npriority = 5\nconcurrent_requests = 4\nmax_queue_wait_seconds = 2.5\n"
        "max_pinned_tokens = 50000\n"
    )
    settings = load_settings(path)
    team = Tier(
        "team",
        priority=5,
        concurrent_requests=4,
        max_queue_wait_seconds=2.5,
        max_pinned_tokens=50_000,
    )
    assert settings.tiers == {"team": team}
    assert settings.prices == Prices(prompt=1.0)
    assert settings.database_url == "sqlite:///x.db"
    assert load_settings(None).tiers == DEFAULT_TIERS
    assert load_settings(None).search_url is None


def test_web_settings_toml(tmp_path):
    path = tmp_path / "web.toml"
    path.write_text(
        '[web]\nsearch_url = "http://searx.internal:8888"\n'
        'allowed_private_hosts = ["Wiki.Internal"]\ntimeout_seconds = 3\n'
    )
    settings = load_settings(path)
    assert settings.search_url == "http://searx.internal:8888"
    assert settings.web.private_allowed_for("wiki.internal")
    assert not settings.web.private_allowed_for("other.internal")
    assert settings.web.timeout_seconds == 3


def test_bad_settings_are_one_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    for text, hint in [
        ("[tiers.a]\nrequests_per_minute = 0\n", "positive"),
        ("[tiers.a]\nmax_pinned_tokens = -1\n", "positive"),
        ("[tiers.a]\npriority = 1.5\n", "integer"),
        ("[prices]\nprompt = -1\n", ">= 0"),
        ("tiers = 3\n", "[tiers.NAME]"),
        ("[tiers.a\n", "cannot read"),
        ("[web]\nsearch_engine = 1\n", "unknown setting 'search_engine'"),
        ("[web]\ntimeout_seconds = 0\n", "positive"),
        ('[web]\nallowed_private_hosts = "wiki"\n', "list of host names"),
    ]:
        path.write_text(text)
        with pytest.raises(ServerConfigError, match=hint.replace("[", r"\[").replace(".", r"\.")):
            load_settings(path)


def test_sliding_window_says_when_room_comes_back():
    window = SlidingWindow(seconds=60)
    window.add(0.0, 50)
    window.add(10.0, 30)
    assert window.used(20.0) == 80
    assert window.seconds_until_room(20.0, limit=100, amount=20) == 0
    assert window.seconds_until_room(20.0, limit=100, amount=40) == 40.0  # the first 50 leave at 60
    assert window.seconds_until_room(20.0, limit=100, amount=90) == 50.0  # both must leave
    assert window.used(60.0) == 30
    assert window.seconds_until_room(0.0, limit=10, amount=11) == 60  # never fits


def test_queue_wait_estimate_is_queue_over_start_rate():
    now = [0.0]
    queue = QueueWaitEstimator(clock=lambda: now[0])
    for _ in range(5):
        queue.enqueue(10)
    queue.enqueue(0)
    assert queue.estimate(10) is None  # no start seen yet: no rate
    for t in (1.0, 2.0, 3.0):
        now[0] = t
        queue.start(10)
    now[0] = 5.0  # 3 starts in the 4 s since the first: 0.75 a second
    assert queue.estimate(10) == pytest.approx(3 / 0.75)  # 2 free and 1 pro ahead
    assert queue.estimate(0) == pytest.approx(1 / 0.75)  # only the pro one is ahead of pro
    queue.drop(0)
    assert queue.estimate(0) == 0.0
    queue.check(Tier("patient", priority=10, max_queue_wait_seconds=5))
    with pytest.raises(OverloadedError) as refused:
        queue.check(Tier("hasty", priority=10, max_queue_wait_seconds=1))
    assert refused.value.status_code == 503
    assert refused.value.retry_after == pytest.approx(2 / 0.75)


def test_since_reads_dates_and_spans():
    assert parse_since("2025-01-31").isoformat() == "2025-01-31T00:00:00"
    assert abs((utc_now() - parse_since("24h")).total_seconds() - 86400) < 60
    with pytest.raises(InvalidRequestError, match="7d"):
        parse_since("last week")
