"""`tome serve`: one process, one AsyncEngine, FastAPI on uvicorn.

Without any API key the server runs open, for one local user, and only on a loopback
address: anywhere else it refuses to start rather than expose an unmetered model."""

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tome.assistant.retrieval.index_cache import IndexCache
from tome.assistant.retrieval.sentence_embedder import SentenceEmbedder
from tome.assistant.web import SearxngSearch
from tome.engine.async_engine import AsyncEngine
from tome.engine.config import EngineConfig
from tome.loader.default_model import embedded_model_path
from tome.server.app import create_app
from tome.server.errors import ServerConfigError
from tome.server.state import ServerState
from tome.server.tiers import ServerSettings, load_settings
from tome.store import Database, KeyStore

logger = logging.getLogger(__name__)
GRACEFUL_SHUTDOWN_S = 10


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    config_path: Path | None = None  # tiers and prices (TOML); None: the defaults
    database_url: str | None = None  # None: the config's, else the SQLite file
    served_model_name: str | None = None  # None: from the model's file or folder name
    search_url: str | None = None  # SearXNG for web search; None: the config's, if any
    embedding_model: str | None = None  # sentence-transformers folder or id; None: BM25 only
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ServerConfigError(f"port must be in 1..65535, not {self.port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_model_name(model: str | None) -> str:
    if model is None:
        return embedded_model_path().stem
    path = Path(model).expanduser()
    if path.exists():
        return path.name.removesuffix(".gguf")
    return model  # a Hub id


def open_database(settings: ServerSettings, database_url: str | None) -> Database:
    return Database(database_url or settings.database_url)


def build_state(engine_config: EngineConfig, config: ServerConfig) -> ServerState:
    """Check the settings and the keys before loading the model (the slow part)."""
    settings = load_settings(config.config_path)
    database = open_database(settings, config.database_url)
    keys = KeyStore(database).all()
    active = [key for key in keys if key.active]
    if not active and not is_loopback(config.host):
        raise ServerConfigError(
            f"no API key exists, and an open server may listen only on 127.0.0.1, not "
            f"{config.host}; create a key with `tome keys create --tier NAME` first"
        )
    for key in active:
        if key.tier not in settings.tiers:
            logger.warning("key %d has tier %r, which is not configured", key.id, key.tier)
    search_url = config.search_url or settings.search_url
    search = SearxngSearch(search_url, settings.web) if search_url else None
    embedder = SentenceEmbedder(config.embedding_model) if config.embedding_model else None
    engine = AsyncEngine(engine_config)
    return ServerState(
        engine=engine,
        settings=settings,
        database=database,
        model_name=config.served_model_name or served_model_name(engine_config.model),
        max_model_len=engine.engine.max_model_len,
        open_mode=not active,
        quantization=engine.engine.weight_quantization,
        search=search,
        index_cache=IndexCache(embedder=embedder),
    )


def serve(engine_config: EngineConfig, config: ServerConfig) -> None:
    state = build_state(engine_config, config)
    mode = "open (no API keys, local only)" if state.open_mode else "API keys required"
    logger.warning(
        "serving %s on http://%s:%d/v1 — %s", state.model_name, config.host, config.port, mode
    )
    app = create_app(state)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        # Streams still open then are cancelled, which aborts their engine requests.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
