"""Settings: the precedence of defaults, config file, environment and flags; config file errors."""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings import FILE_ONLY, ConfigError, Settings, load, read_config_file
from tests.conftest import ROOT

DEFAULT_TOML = ROOT / "config" / "default.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("LLAMASERVE_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- config/default.toml ----------------------------------------------------------------------


def test_default_toml_lists_every_setting_with_its_default() -> None:
    text = DEFAULT_TOML.read_text()
    values = tomllib.loads(text)
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if name in FILE_ONLY:
            # A list of tables: shown as a commented example, since `name = []` would forbid [[name]].
            assert re.search(rf"^# \[\[{name}\]\]$", text, re.MULTILINE), f"no commented [[{name}]] example"
        elif default is None:
            # TOML has no null: a setting without a default is shown commented out.
            assert re.search(rf"^# {name} = ", text, re.MULTILINE), f"{name} is missing from default.toml"
        else:
            assert name in values, f"{name} is missing from default.toml"
            assert values[name] == default, f"default.toml says {name} = {values[name]!r}, the default is {default!r}"
    for line in text.splitlines():
        if re.match(r"^[a-z_]+ = ", line):
            assert "#" in line, f"no comment on: {line}"


def test_default_toml_loads_to_the_built_in_defaults() -> None:
    assert load(config_file=DEFAULT_TOML) == Settings()


def test_commented_models_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = DEFAULT_TOML.read_text()
    example = text[text.index("# [[models]]") :]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in example.splitlines())
    settings = load(config_file=write(tmp_path, uncommented))
    assert [m.alias for m in settings.models] == ["llama", "smol"]
    llama, smol = settings.model_settings()
    assert (llama.ctx_size, llama.parallel, llama.chat_template, llama.n_gpu_layers) == (4096, 2, "llama-3.1", 999)
    assert (smol.model, smol.ctx_size, smol.parallel) == (None, 2048, 4)  # parallel: the top-level default


# ---- precedence -------------------------------------------------------------------------------


def test_precedence_defaults_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "port = 9001\nctx_size = 1024\nparallel = 2\nmax_queue = 7\n")
    monkeypatch.setenv("LLAMASERVE_CTX_SIZE", "2048")
    monkeypatch.setenv("LLAMASERVE_PARALLEL", "3")
    s = load({"parallel": 5, "host": None}, config)
    assert s.port == 9001  # file over default
    assert s.ctx_size == 2048  # env over file
    assert s.parallel == 5  # flag over env
    assert s.max_queue == 7  # file, untouched by others
    assert s.host == "127.0.0.1"  # a flag not given (None) does not override
    assert s.batch_size == 512  # default


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMASERVE_CONFIG", str(write(tmp_path, "port = 9002\n")))
    assert load().port == 9002


def test_hyphenated_keys_are_accepted(tmp_path: Path) -> None:
    assert load(config_file=write(tmp_path, "ctx-size = 333\nmax-queue = 1\n")).ctx_size == 333


def test_list_settings_from_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMASERVE_API_KEYS", '["k1", "k2"]')
    assert load().api_keys == ["k1", "k2"]
    monkeypatch.setenv("LLAMASERVE_API_KEYS", "k1,k2")
    with pytest.raises(ConfigError, match="JSON"):
        load()


def test_unknown_environment_variable_warns_with_suggestion(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLAMASERVE_CTX_SIZ", "5")
    with caplog.at_level(logging.WARNING):
        load()
    assert "LLAMASERVE_CTX_SIZ" in caplog.text
    assert "Did you mean 'ctx_size'?" in caplog.text


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("ctx_sise", "ctx_size"), ("n_ctx", "ctx_size"), ("prot", "port"), ("ngl", "n_gpu_layers")],
)
def test_unknown_key_suggests_the_right_one(tmp_path: Path, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"Unknown setting '{key}'.*Did you mean '{suggestion}'"):
        read_config_file(write(tmp_path, f"{key} = 1\n"))


def test_unknown_key_without_a_near_miss_has_no_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_config_file(write(tmp_path, "zzzzzz = 1\n"))
    assert "Did you mean" not in info.value.message


def test_unknown_key_in_a_models_entry(tmp_path: Path) -> None:
    config = write(tmp_path, '[[models]]\nalias = "a"\n\n[[models]]\nalias = "b"\nctx = 5\n')
    with pytest.raises(ConfigError, match=r"Unknown setting 'ctx' in \[\[models\]\] entry 2.*Did you mean 'ctx_size'"):
        load(config_file=config)


def test_models_must_be_an_array_of_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[\[models\]\]"):
        load(config_file=write(tmp_path, 'models = ["a.gguf"]\n'))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(config_file=write(tmp_path, "port = = 1\n"))
    with pytest.raises(ConfigError, match="Config file not found"):
        load(config_file=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load(config_file=tmp_path)


def test_bad_value_names_the_setting_and_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"'parallel' from --parallel: .*less than or equal to 256 \(got 1000\)"):
        load({"parallel": 1000})
    with pytest.raises(ConfigError, match=r"'port' from the config file .*config\.toml"):
        load(config_file=write(tmp_path, 'port = "http"\n'))
    monkeypatch.setenv("LLAMASERVE_CTX_SIZE", "-1")
    with pytest.raises(ConfigError, match="'ctx_size' from the environment variable LLAMASERVE_CTX_SIZE"):
        load()
    monkeypatch.delenv("LLAMASERVE_CTX_SIZE")
    with pytest.raises(ConfigError, match=r"'models\.0\.parallel' from the config file"):
        load(config_file=write(tmp_path, "[[models]]\nparallel = 0\n"))


def test_api_key_file_must_be_readable_and_hold_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="API key file not found"):
        load({"api_key_file": str(tmp_path / "none.txt")})
    empty = write(tmp_path, "# only a comment\n\n", "keys.txt")
    with pytest.raises(ConfigError, match="holds no keys"):
        load({"api_key_file": str(empty)})
    good = write(tmp_path, "# ops team\nsk-one\n  sk-two  \n", "good.txt")
    assert load({"api_key_file": str(good), "api_keys": ["sk-flag"]}).api_keys == ["sk-flag", "sk-one", "sk-two"]
    assert Settings(api_key_file=str(good)).api_keys == ["sk-one", "sk-two"]  # however Settings is built


# ---- several models ---------------------------------------------------------------------------


def test_models_inherit_top_level_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'ctx_size = 1024\nparallel = 3\nchat_template = "chatml"\nbatch_size = 64\n'
        '[[models]]\npath = "a.gguf"\nalias = "a"\n'
        '[[models]]\npath = "b.gguf"\nalias = "b"\nctx_size = 512\nparallel = 1\nchat_template = "llama-3.1"\n',
    )
    a, b = load(config_file=config).model_settings()
    assert (a.model, a.alias, a.ctx_size, a.parallel, a.chat_template, a.batch_size) == (
        "a.gguf",
        "a",
        1024,
        3,
        "chatml",
        64,
    )
    assert (b.model, b.alias, b.ctx_size, b.parallel, b.chat_template, b.batch_size) == (
        "b.gguf",
        "b",
        512,
        1,
        "llama-3.1",
        64,
    )
    assert a.models == [] and b.models == []


def test_single_model_settings_is_itself() -> None:
    s = Settings(model="x.gguf", alias="x")
    assert s.model_settings() == [s]


def test_model_flag_replaces_the_files_models(tmp_path: Path) -> None:
    config = write(tmp_path, '[[models]]\nalias = "a"\n[[models]]\nalias = "b"\n')
    s = load({"model": "only.gguf"}, config)
    assert s.models == []
    assert [m.model for m in s.model_settings()] == ["only.gguf"]


def test_model_and_models_in_one_file_is_ambiguous(tmp_path: Path) -> None:
    config = write(tmp_path, 'model = "x.gguf"\n[[models]]\nalias = "a"\n')
    with pytest.raises(ConfigError, match=r"both 'model' and \[\[models\]\]"):
        load(config_file=config)


def test_duplicate_aliases_are_refused(tmp_path: Path) -> None:
    config = write(tmp_path, '[[models]]\nalias = "a"\n[[models]]\nalias = "a"\nctx_size = 5\n')
    with pytest.raises(ConfigError, match="share the alias 'a'"):
        load(config_file=config)


def test_a_kv_pool_per_slot_unless_unified_by_flag_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load().kv_unified is False
    assert load({"kv_unified": True}).kv_unified is True
    assert load({}, write(tmp_path, "kv_unified = true\n")).kv_unified is True
    monkeypatch.setenv("LLAMASERVE_KV_UNIFIED", "true")
    assert load().kv_unified is True
