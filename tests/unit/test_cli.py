"""The CLI's flags and the checks made before loading (no sockets, no model loaded)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest

from server.cli import main as cli
from server.cli import preflight
from server.cli.prompt import PromptOptions
from server.engine.llama.model_files import (
    GGML_BLOCK_SIZES,
    ModelFileError,
    bundled_model_path,
    default_model_id,
    mem_available_bytes,
    read_gguf_summary,
    resolve_model_path,
)
from server.settings import FILE_ONLY, ConfigError, Settings, load
from tests.helpers.gguf_files import write_header_only_gguf


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("LLAMASERVE_"):
            monkeypatch.delenv(name)
    yield


def parse(*argv: str) -> dict[str, Any]:
    return vars(cli.build_parser().parse_args(list(argv)))


def settings_from(*argv: str) -> Settings:
    args = parse(*argv)
    args.pop("config")
    for k in PromptOptions.model_fields:
        args.pop(k)
    return load(args)


# ---- flags ------------------------------------------------------------------------------------


def test_every_setting_has_a_flag_and_help_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    text = text[text.index("options:") :]  # past the usage summary
    for name, field in [*Settings.model_fields.items(), *PromptOptions.model_fields.items()]:
        if name in FILE_ONLY:
            continue
        flag = cli._flag_name(name, field.annotation)
        assert f"{flag} " in text or f"{flag}," in text, f"{flag} missing from --help"
        i = text.index(flag)
        assert "(default:" in text[i : i + 400], f"no default shown for {flag}"
    for short in ("-m", "-a", "-c", "-np", "-ngl", "-t", "-b", "-p", "-n"):
        assert f"{short} " in text
    assert "(default: 8192)" in text and "(default: 127.0.0.1)" in text and "(default: 8080)" in text
    assert "--config FILE" in text and "--version" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from server import __version__

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"llamaserve {__version__}"


def test_llamafile_style_flags() -> None:
    s = settings_from(
        "-m", "m.gguf", "-a", "mine", "-c", "0", "-np", "2", "-ngl", "999", "-t", "3", "-b", "64",
        "--host", "0.0.0.0", "--port", "9000", "--max-queue", "5", "--chat-template", "chatml",
        "--log-format", "json", "--no-browser",
    )  # fmt: skip
    assert (s.model, s.alias, s.ctx_size, s.parallel, s.n_gpu_layers, s.threads, s.batch_size) == (
        "m.gguf", "mine", 0, 2, 999, 3, 64,
    )  # fmt: skip
    assert (s.host, s.port, s.max_queue, s.chat_template, s.log_format, s.no_browser) == (
        "0.0.0.0", 9000, 5, "chatml", "json", True,
    )  # fmt: skip


def test_long_forms_match_llama_cpp() -> None:
    s = settings_from("--model", "x.gguf", "--ctx-size", "64", "--parallel", "1", "--n-gpu-layers", "1")
    assert (s.model, s.ctx_size, s.parallel, s.n_gpu_layers) == ("x.gguf", 64, 1, 1)


def test_api_key_is_repeatable() -> None:
    assert settings_from("--api-key", "a", "--api-key", "b").api_keys == ["a", "b"]


def test_flags_not_given_leave_lower_levels_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("no_browser = true\nport = 1234\n")
    args = parse("--config", str(config), "-c", "100")
    assert load({k: v for k, v in args.items() if k in Settings.model_fields}, args["config"]).port == 1234
    assert all(args[k] is None for k in Settings.model_fields if k not in ("ctx_size",) and k in args)


def test_boolean_flags_can_turn_a_file_setting_off(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("allow_unauthenticated = true\n")
    args = parse("--no-allow-unauthenticated")
    assert load({"allow_unauthenticated": args["allow_unauthenticated"]}, config).allow_unauthenticated is False


def test_bad_flag_value_is_a_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-np", "many"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_prompt_flags_without_prompt_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-n", "5"]) == 2
    assert "add -p TEXT" in capsys.readouterr().err


def test_bad_configuration_exits_2_with_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("ctx_sise = 1\n")
    assert cli.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamaserve: Unknown setting 'ctx_sise'") and "Did you mean 'ctx_size'?" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# ---- model files ------------------------------------------------------------------------------


def test_ggml_block_sizes_match_the_gguf_package() -> None:
    for ttype, size in GGML_BLOCK_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)] == size


def test_bundled_model_summary() -> None:
    summary = read_gguf_summary(bundled_model_path())
    assert summary.architecture == "llama"
    assert summary.n_ctx_train == 8192
    assert (summary.n_layer, summary.n_embd, summary.n_head, summary.n_head_kv) == (30, 576, 9, 3)
    # f16 K and V: 30 layers x (64 + 64) dims x 3 KV heads x 2 bytes.
    assert summary.kv_bytes_per_token() == 30 * 128 * 3 * 2


def test_missing_file_and_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="Model file not found"):
        resolve_model_path(str(tmp_path / "absent.gguf"))
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="is not a GGUF file"):
        resolve_model_path(str(other))


def test_directory_and_glob_are_refused_with_what_they_hold(tmp_path: Path) -> None:
    write_header_only_gguf(tmp_path / "a.gguf")
    write_header_only_gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelFileError, match=r"is a directory; -m takes one \.gguf file\. It holds: a\.gguf, b\.gguf"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelFileError, match=r"not a pattern: .*It matches: .*a\.gguf, .*b\.gguf"):
        resolve_model_path(str(tmp_path / "*.gguf"))


def test_truncated_gguf_is_detected(tmp_path: Path) -> None:
    whole = write_header_only_gguf(tmp_path / "whole.gguf", tensors=4)
    assert read_gguf_summary(whole).n_tensors == 4
    data = whole.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])  # inside the last tensor's data
    with pytest.raises(ModelFileError, match=r"truncated or corrupt: tensor 't3'"):
        read_gguf_summary(cut)
    cut.write_bytes(data[:200])  # inside the header
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_gguf_summary(cut)
    cut.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)  # absurd counts
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_gguf_summary(cut)


def test_split_model_resolves_to_its_first_part(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        write_header_only_gguf(tmp_path / f"big-0000{i}-of-00003.gguf")
    first = tmp_path / "big-00001-of-00003.gguf"
    assert resolve_model_path(str(tmp_path / "big-00002-of-00003.gguf")) == first
    assert default_model_id(first) == "big"
    (tmp_path / "big-00003-of-00003.gguf").unlink()
    with pytest.raises(ModelFileError, match=r"split in 3 files, and big-00003-of-00003\.gguf is missing"):
        resolve_model_path(str(first))


def test_mem_available_reads_meminfo(tmp_path: Path) -> None:
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  1000 kB\nMemAvailable:     2048 kB\n")
    assert mem_available_bytes(fake) == 2048 * 1024
    assert mem_available_bytes(tmp_path / "none") is None


# ---- preflight --------------------------------------------------------------------------------


def test_context_larger_than_trained_is_clamped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf", context_length=4096)
    with caplog.at_level(logging.WARNING):
        checked = preflight.check_model(Settings(model=str(path), ctx_size=100_000, parallel=2))
    assert checked.settings.ctx_size == 4096
    assert "--ctx-size 100000 is larger than the 4096 tokens m.gguf was trained on" in caplog.text
    # 2 layers x (16 + 16) dims x 2 KV heads x 2 bytes per token, for 2 slots x 4096 tokens.
    assert checked.kv_bytes == 2 * 32 * 2 * 2 * 4096 * 2
    assert checked.settings.alias == "m"


def test_context_zero_means_trained_maximum(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf", context_length=2048)
    assert preflight.check_model(Settings(model=str(path), ctx_size=0)).settings.ctx_size == 2048


def test_unknown_chat_template_is_refused(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf")
    with pytest.raises(Exception, match="neither a template name"):
        preflight.check_model(Settings(model=str(path), chat_template="no-such-template"))


def test_memory_check_refuses_a_kv_cache_that_cannot_fit(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf", context_length=8192)
    checked = preflight.check_model(Settings(model=str(path), ctx_size=8192, parallel=4))
    preflight.check_memory([checked], 0, checked.kv_bytes)  # exactly enough: fine
    with pytest.raises(ConfigError, match=r"Not enough memory for the KV cache: .*4 slots x 8192 tokens"):
        preflight.check_memory([checked], 0, checked.kv_bytes - 1)
    preflight.check_memory([checked], 0, None)  # unknown (no /proc): not refused


def test_memory_check_counts_only_models_kept_loaded(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf", context_length=1024)
    a = preflight.check_model(Settings(model=str(path), alias="a", ctx_size=1024))
    b = preflight.check_model(Settings(model=str(path), alias="b", ctx_size=512))
    with pytest.raises(ConfigError, match="max-loaded-models"):
        preflight.check_memory([a, b], 0, a.kv_bytes + 1)
    preflight.check_memory([a, b], 1, a.kv_bytes + 1)  # one loaded at a time: the bigger one fits


def test_preflight_resolves_every_model_and_refuses_duplicate_ids(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf", context_length=1024)
    config = tmp_path / "c.toml"
    config.write_text(f'[[models]]\npath = "{path}"\nalias = "x"\n[[models]]\npath = "{path}"\nctx_size = 99999\n')
    settings, checked = preflight.preflight(load(config_file=config))
    assert [(m.alias, m.ctx_size) for m in settings.models] == [("x", 1024), ("m", 1024)]
    assert len(checked) == 2
    copy = tmp_path / "sub"
    copy.mkdir()
    shutil.copy(path, copy / "m.gguf")
    config.write_text(f'[[models]]\npath = "{path}"\n[[models]]\npath = "{copy / "m.gguf"}"\n')
    with pytest.raises(ConfigError, match="would both be called 'm'"):
        preflight.preflight(load(config_file=config))


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/"),
        ("0.0.0.0", "http://127.0.0.1:8080/"),
        ("::", "http://[::1]:8080/"),
        ("::1", "http://[::1]:8080/"),
        ("192.168.1.5", "http://192.168.1.5:8080/"),
    ],
)
def test_the_browser_is_sent_to_an_address_it_can_open(host: str, url: str) -> None:
    assert cli.browser_url(host, 8080) == url


def test_alias_flag_takes_comma_separated_names_and_strict_model_name() -> None:
    settings = settings_from("-a", "smol, gpt-4o,gpt-3.5-turbo", "--strict-model-name")
    assert settings.model_names() == ["smol", "gpt-4o", "gpt-3.5-turbo"] and settings.strict_model_name
    assert not settings_from().strict_model_name and settings_from().model_names() == []


def test_chat_template_names_llama_cpp_knows_pass_the_preflight(tmp_path: Path) -> None:
    path = write_header_only_gguf(tmp_path / "m.gguf")
    assert preflight.check_model(Settings(model=str(path), chat_template="mistral-v7")).settings.chat_template
    with pytest.raises(Exception, match="gemma"):  # the refusal lists llama.cpp's names too
        preflight.check_model(Settings(model=str(path), chat_template="gemma-9"))
