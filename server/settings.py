"""One settings model for the whole server.

Precedence, lowest first: built-in defaults < config file (TOML) < ``LLAMASERVE_*``
environment variables < command-line flags. :func:`load` applies it; the CLI in
:mod:`server.cli.main` builds its flags from the same fields, so ``--help`` shows every
default and a field added here gets its flag, its environment variable and its
config key at once. ``config/default.toml`` lists every setting.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from server.errors import LlamaserveError

log = logging.getLogger(__name__)

ENV_PREFIX = "LLAMASERVE_"

# Names people bring from llama.cpp, llamafile and other servers' config files.
KNOWN_SPELLINGS = {
    "n_ctx": "ctx_size",
    "context_size": "ctx_size",
    "n_parallel": "parallel",
    "n_threads": "threads",
    "n_batch": "batch_size",
    "ngl": "n_gpu_layers",
    "gpu_layers": "n_gpu_layers",
    "model_alias": "alias",
    "model_path": "model",
    "api_key": "api_keys",
    "chat_format": "chat_template",
}


class ConfigError(LlamaserveError):
    """Configuration that cannot be served; the CLI prints the message and exits 2."""


class ModelConfig(BaseModel):
    """One ``[[models]]`` entry; a setting left out takes the top-level value."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(default=None, description="GGUF file (default: the bundled SmolLM2)")
    alias: str | None = Field(
        default=None, description="id in /v1/models and the `model` field that routes to it; more names after commas"
    )
    ctx_size: int | None = Field(default=None, ge=0, description="context tokens per sequence")
    parallel: int | None = Field(default=None, ge=1, le=256, description="sequence slots decoded together")
    chat_template: str | None = Field(default=None, description="chat template name or Jinja file")
    n_gpu_layers: int | None = Field(default=None, ge=0, description="layers to offload to a GPU")


class KeyConfig(BaseModel):
    """One ``[[keys]]`` entry: an API key (accepted, like ``api_keys``) and how the scheduler treats it."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, description="the API key itself")
    weight: float = Field(default=1.0, gt=0, description="share of the queue under contention (relative)")
    priority: int = Field(default=0, description="priority of its requests that give none (lower is sooner)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    model: str | None = Field(
        default=None, description="GGUF file to serve; a split model loads from its first part (default: bundled)"
    )
    alias: str | None = Field(
        default=None,
        description="model id shown in /v1/models (default: the file name); more names after commas: id,name2,...",
    )
    strict_model_name: bool = Field(
        default=False, description="answer an unknown `model` name with 404 even when one model is served"
    )
    default_model: str | None = Field(
        default=None, description="with several models: the one that answers an unknown `model` name (default: 404)"
    )
    pooling: Literal["mean", "cls", "last", "none"] | None = Field(
        default=None,
        description="how /v1/embeddings pools token vectors (default: the GGUF's own; mean when it says none); "
        "none: per-token vectors, which /v1/embeddings refuses",
    )
    reasoning_format: Literal["none", "deepseek"] = Field(
        default="deepseek",
        description="deepseek: a reply's <think>...</think> goes to reasoning_content; none: left in the content",
    )
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8080, ge=0, le=65535, description="port to bind (0 = any free port)")
    parallel: int = Field(default=4, ge=1, le=256, description="sequence slots decoded together")
    ctx_size: int = Field(
        default=8192, ge=0, description="context tokens per sequence (0 = the model's trained maximum)"
    )
    batch_size: int = Field(default=512, ge=1, description="max tokens per decode step (chunked prefill)")
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads (default: the physical cores this process may use)"
    )
    n_gpu_layers: int = Field(
        default=0, ge=0, description="layers to offload to a GPU or RPC workers (999 = all; default with --rpc: 999)"
    )
    rpc: list[str] = Field(
        default_factory=list,
        description="RPC workers (llamaserve rpc-worker) to hold the model's layers: HOST:PORT, comma-separated",
    )
    tensor_split: list[float] = Field(
        default_factory=list, description="share of the model per device, comma-separated, e.g. 1,1 (default: even)"
    )
    rpc_wait: float = Field(
        default=0.0,
        ge=0,
        description="seconds to wait at start for every RPC worker to answer (0 = exit 2 at once if one does not)",
    )
    max_queue: int = Field(default=64, ge=0, description="requests that may wait for a slot before 429")
    max_queue_per_key: int = Field(
        default=0, ge=0, description="requests one API key may have waiting before 429 (0 = only --max-queue)"
    )
    preempt_after: float = Field(
        default=0.25,
        ge=0,
        description="seconds a request of better priority may wait while every slot is busy before the worst "
        "running sequence is paused for it (0 = never preempt)",
    )
    fair_prefill: bool = Field(
        default=True,
        description="share each step's prompt processing among waiting prompts (off: first come, first served)",
    )
    kv_unified: bool = Field(
        default=False,
        description="one KV cache pool for all slots: slots share prefix cells instead of copying them, but every "
        "decode attends over idle slots' cached cells too (off: a pool per slot, as llama-server gives with -np)",
    )
    # ---- prompt cache (server/engine/prompt_cache/) ----
    cache_ram: int | None = Field(
        default=None,
        ge=0,
        description="MiB of host RAM per model for prompt states evicted from the slots "
        "(default: a quarter of available memory, at most 8192; 0 = off)",
    )
    cache_min_tokens: int = Field(
        default=256, ge=1, description="shortest prompt prefix worth saving to or restoring from the prompt cache"
    )
    cache_dir: str | None = Field(
        default=None, description="directory for prompt states that survive a restart (default: none, RAM only)"
    )
    cache_disk: int = Field(default=10240, ge=1, description="MiB of prompt states kept in --cache-dir per model")
    chat_template: str | None = Field(
        default=None, description="chat template: a name or a Jinja file (default: the GGUF's own)"
    )
    # ---- stored state (server/state/) ----
    state_dir: str | None = Field(
        default=None,
        description="directory of the database of stored responses (Responses API); ':memory:' keeps them "
        "in memory only (default: $XDG_DATA_HOME/llamaserve, else ~/.local/share/llamaserve)",
    )
    responses_max_age: float = Field(
        default=30.0, ge=0, description="days a stored response is kept (0 = until the byte bound evicts it)"
    )
    responses_max_bytes: int = Field(
        default=2**30, ge=0, description="bytes of stored responses kept; the oldest go first (0 = no bound)"
    )
    api_keys: list[str] = Field(default_factory=list, description="accepted API keys (empty = no auth)")
    api_key_file: str | None = Field(default=None, description="file of accepted API keys, one per line")
    keys: list[KeyConfig] = Field(
        default_factory=list, description="per-key fair-share weight and default priority ([[keys]] in the file)"
    )
    # ---- security and reliability (server/api/security.py, server/services/limits.py, server/api/shutdown.py) ----
    allow_unauthenticated: bool = Field(default=False, description="allow binding a non-loopback host without API keys")
    metrics_public: bool = Field(
        default=False,
        description="serve /metrics without an API key (for scrapers that cannot send one, "
        "such as the inference gateway's endpoint picker)",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed by CORS (repeatable; '*' = any; 'localhost' = any loopback origin, any port; "
        "empty = CORS off)",
    )
    cors_credentials: bool = Field(
        default=False, description="let allowed origins send credentials (cookies, HTTP auth) with CORS requests"
    )
    shutdown_timeout: float = Field(
        default=30.0, ge=0, description="seconds running requests may finish after SIGTERM before they are ended"
    )
    request_timeout: float = Field(
        default=0.0, ge=0, description="seconds a request may take from arrival to its last token (0 = no limit)"
    )
    liveness_timeout: float = Field(
        default=300.0,
        ge=0,
        description="seconds the engine may go without finishing a step while work is pending "
        "before /health/live answers 503 (0 = never)",
    )
    max_body_bytes: int = Field(default=4 * 2**20, ge=0, description="largest request body in bytes (0 = no limit)")
    max_messages: int = Field(default=2048, ge=1, description="most messages in one chat request")
    max_n: int = Field(default=16, ge=1, description="most choices (n) in one request")
    max_stop: int = Field(default=4, ge=0, description="most stop sequences in one request")
    max_stop_length: int = Field(default=256, ge=1, description="longest stop sequence, in characters")
    max_tokens_limit: int = Field(
        default=2**20, ge=1, description="largest max_tokens accepted (the context caps it further)"
    )
    max_logit_bias: int = Field(default=1024, ge=0, description="most logit_bias entries in one request")
    max_json_depth: int = Field(
        default=32, ge=1, description="deepest nesting of a json_schema or tool parameters schema"
    )
    max_grammar_bytes: int = Field(default=64 * 2**10, ge=1, description="largest GBNF grammar, in bytes")
    no_browser: bool = Field(default=False, description="do not open the web UI in a browser")
    log_format: Literal["text", "json"] = Field(default="text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    max_loaded_models: int = Field(
        default=0, ge=0, description="models kept loaded at once; the least recently used is unloaded (0 = all)"
    )
    idle_unload: float = Field(default=0.0, ge=0, description="unload a model idle this many seconds (0 = never)")
    models: list[ModelConfig] = Field(
        default_factory=list, description="several models by name ([[models]] in the config file)"
    )

    @field_validator("rpc", "tensor_split", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # llama.cpp's spelling is one comma-separated value (--rpc a:1,b:2); repeating the flag works too.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [part.strip() for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
        return value

    @model_validator(mode="after")
    def _layers_on_rpc_workers(self) -> Settings:
        # llama.cpp offloads to RPC devices only when n_gpu_layers > 0: with workers, all layers go there.
        if self.rpc and "n_gpu_layers" not in self.model_fields_set:
            self.n_gpu_layers = 999
        return self

    @model_validator(mode="after")
    def _add_keys_from_file(self) -> Settings:
        # Read once here, so every consumer of ``api_keys`` (auth, the non-loopback check) sees them.
        if self.api_key_file:
            for key in read_api_key_file(Path(self.api_key_file)):
                if key not in self.api_keys:
                    self.api_keys.append(key)
        for entry in self.keys:  # a key given a weight or priority is an accepted key
            if entry.key not in self.api_keys:
                self.api_keys.append(entry.key)
        return self

    def model_names(self) -> list[str]:
        """The names ``alias`` gives this model, the id first (``-a id,name2``: llama-server's spelling)."""
        return [name.strip() for name in (self.alias or "").split(",") if name.strip()]

    def model_settings(self) -> list[Settings]:
        """One flat Settings per model to serve: each ``[[models]]`` entry over the top level.

        With no ``[[models]]`` it is ``[self]``, so one code path loads one model or many.
        """
        if not self.models:
            return [self]
        out = []
        for m in self.models:
            update: dict[str, Any] = {"model": m.path, "alias": m.alias, "models": []}
            for name in ("ctx_size", "parallel", "chat_template", "n_gpu_layers"):
                value = getattr(m, name)
                if value is not None:
                    update[name] = value
            out.append(self.model_copy(update=update))
        return out


# Settings that have no command-line flag: lists of tables belong in a file.
FILE_ONLY = frozenset({"models", "keys"})


def _suggest(key: str, known: list[str]) -> str:
    if key in KNOWN_SPELLINGS and KNOWN_SPELLINGS[key] in known:
        return f" Did you mean '{KNOWN_SPELLINGS[key]}'?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _check_keys(where: str, keys: list[str], known: list[str]) -> None:
    for key in keys:
        if key not in known:
            raise ConfigError(
                f"Unknown setting '{key}' in {where}.{_suggest(key, known)} "
                f"Every setting is listed, with its default, in config/default.toml and in `llamaserve --help`."
            )


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, keys normalised to field names; unknown keys are refused."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"The config file {path} is a directory; --config takes a TOML file.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read the config file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The config file {path} is not valid TOML: {exc}.") from None
    values = {k.replace("-", "_"): v for k, v in data.items()}
    _check_keys(f"the config file {path}", list(values), list(Settings.model_fields))
    keys = values.get("keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys)):
        raise ConfigError(f"In {path}, 'keys' must be an array of tables: write each one as [[keys]].")
    models = values.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise ConfigError(f"In {path}, 'models' must be an array of tables: write each one as [[models]].")
        normalised = []
        for i, entry in enumerate(models, start=1):
            entry = {k.replace("-", "_"): v for k, v in entry.items()}
            _check_keys(f"[[models]] entry {i} of {path}", list(entry), list(ModelConfig.model_fields))
            normalised.append(entry)
        values["models"] = normalised
    return values


def read_api_key_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"API key file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the API key file {path}: {exc}.") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"The API key file {path} holds no keys (one per line; # starts a comment).")
    return keys


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    known = list(Settings.model_fields)
    for name in environ:
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            key = name[len(ENV_PREFIX) :].lower()
            if key not in known:
                # Other tools may share the prefix, so a stray variable only warns.
                log.warning("ignoring unknown environment variable %s.%s", name, _suggest(key, known))
    try:
        return EnvSettingsSource(Settings)()
    except SettingsError as exc:
        raise ConfigError(
            f"A {ENV_PREFIX}* environment variable could not be parsed ({exc}); list settings take JSON, "
            f'e.g. {ENV_PREFIX}API_KEYS=\'["key1", "key2"]\'.'
        ) from None


def _describe_error(exc: ValidationError, origins: Mapping[str, str]) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else "?"
        where = origins.get(name, "the built-in default")
        shown = ".".join(loc)
        value = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict | list) else ""
        parts.append(f"'{shown}' from {where}: {err['msg']}{value}")
    return "Invalid setting " + "; ".join(parts) + "."


def load(cli: Mapping[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build settings from a config file, the environment and CLI values (None = flag not given).

    The config file may also come from ``LLAMASERVE_CONFIG``. Raises :class:`ConfigError`
    with a message fit to show a person.
    """
    if config_file is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(os.environ[ENV_PREFIX + "CONFIG"])
    file_values = read_config_file(config_file) if config_file else {}
    env_values = _env_values(os.environ)
    explicit = {k: v for k, v in (cli or {}).items() if v is not None}
    origins = {k: f"the config file {config_file}" for k in file_values}
    origins.update({k: f"the environment variable {ENV_PREFIX}{k.upper()}" for k in env_values})
    origins.update({k: f"--{k.replace('_', '-')}" for k in explicit})
    merged = {**file_values, **env_values, **explicit}
    if "model" in merged and "models" in merged:
        model_origin, models_origin = origins["model"], origins["models"]
        if model_origin == models_origin:
            raise ConfigError(
                f"{model_origin} sets both 'model' and [[models]]: use [[models]] alone to serve several models."
            )
        # A model named on a higher level (a flag over the file) replaces the file's list.
        log.info("serving only %s (from %s) instead of the [[models]] list", merged["model"], model_origin)
        del merged["models"]
    try:
        # model_validate, not Settings(...): the environment was read once, above.
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, origins)) from None
    aliases = [name for s in settings.model_settings() for name in s.model_names()]
    dupes = sorted({a for a in aliases if aliases.count(a) > 1})
    if dupes:
        raise ConfigError(f"Two [[models]] share the alias {dupes[0]!r}; each model needs its own name.")
    if settings.default_model is not None and settings.models and settings.default_model not in aliases:
        raise ConfigError(f"default_model {settings.default_model!r} is none of the [[models]] aliases: {aliases}.")
    return settings
