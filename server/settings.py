"""One settings model for the whole server.

Precedence, lowest first: built-in defaults < config file (TOML) < ``LLAMASERVE_*``
environment variables < command-line flags. :func:`load` applies it; the CLI in
:mod:`server.__main__` builds its flags from the same fields, so ``--help`` shows
every default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLAMASERVE_", extra="forbid", validate_default=True)

    model: str | None = Field(
        default=None, description="GGUF file to serve; default: the bundled SmolLM2-135M-Instruct"
    )
    alias: str | None = Field(default=None, description="model id shown in /v1/models")
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8080, ge=0, le=65535, description="port to bind")
    parallel: int = Field(default=4, ge=1, le=256, description="sequence slots decoded together")
    ctx_size: int = Field(
        default=8192, ge=0, description="context tokens per sequence (0 = the model's trained maximum)"
    )
    batch_size: int = Field(default=512, ge=1, description="max tokens per decode step (chunked prefill)")
    threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all cores)")
    n_gpu_layers: int = Field(default=0, ge=0, description="layers to offload to a GPU (999 = all)")
    max_queue: int = Field(default=64, ge=0, description="requests that may wait for a slot before 429")
    chat_template: str | None = Field(default=None, description="chat template name or Jinja file")
    api_keys: list[str] = Field(default_factory=list, description="accepted API keys (empty = no auth)")
    no_browser: bool = Field(default=False, description="do not open the web UI in a browser")
    log_format: Literal["text", "json"] = Field(default="text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")


def read_config_file(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    server = data.get("server", data)
    return {k.replace("-", "_"): v for k, v in server.items() if not isinstance(v, dict | list) or k == "api_keys"}


def load(cli: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build settings from a config file, the environment and CLI overrides (None = not given)."""
    file_values = read_config_file(config_file) if config_file else {}
    env_values = EnvSettingsSource(Settings)()
    explicit = {k: v for k, v in (cli or {}).items() if v is not None}
    return Settings(**{**file_values, **env_values, **explicit})
