"""The CLI's argument handling: bad settings fail before any model loads."""

from __future__ import annotations

import pytest

from align_chains import cli
from align_chains.cli_options import parse_option


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("align_chains.chat_models.base.load_policy", refuse)
    monkeypatch.setattr("align_chains.chat_models.base.load_reward", refuse)
    monkeypatch.setattr("align_chains.rewards.load_reward", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "0"], "invalid n=0"),
        (["--max-tokens", "0"], "invalid max_tokens=0"),
        (["--temperature", "-1"], "invalid temperature=-1.0"),
        (["--strategy", "nope"], "Unknown strategy 'nope'"),
        (["--strategy", "adaptive"], "BestOfNChatModel(allocation='adaptive'"),
        (["-o", "beams=3"], "beams"),
        (["--strategy", "args", "-o", "k=0"], "invalid k=0"),
        (["--strategy", "args", "-o", "w=-1"], "invalid w=-1"),
        (["--strategy", "ivg", "-o", "beams=0"], "invalid beams=0"),
        (["--strategy", "ivg", "-o", "chunk_tokens=0"], "invalid chunk_tokens=0"),
        (["--strategy", "ivg", "-o", "token_guidance=true"], "needs a guide"),
        (["--strategy", "ivg", "--principle", ""], "principle"),
        (["--strategy", "sea", "-o", "chains=0"], "invalid chains=0"),
        (["--strategy", "sea", "-o", "iterations=0"], "invalid iterations=0"),
        (["--strategy", "sea", "-o", "lr=-1"], "invalid lr=-1"),
        (["--strategy", "sea", "-o", "decode_top_k=0"], "invalid decode_top_k=0"),
        (["--strategy", "sea", "--max-tokens", "0"], "invalid max_tokens=0"),
        (["--strategy", "sea", "--n", "4"], "Unknown strategy option(s) ['n'] for 'sea'"),
        (["--strategy", "args", "--llama-cpp"], "--llama-cpp serves only best-of-n"),
    ],
)
def test_bad_settings_fail_before_loading(no_loading, capsys, argv, message):
    assert cli.main(["chat", "Hello", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_option_values_are_parsed_as_json():
    assert parse_option("n=8") == ("n", 8)
    assert parse_option("allocation=adaptive") == ("allocation", "adaptive")
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_option("novalue")


def test_serve_without_a_registered_command_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(cli, "entry_points", lambda **_: ())  # no package registers 'serve'
    assert cli.main(["serve", "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e integrations/server" in err
    assert "align_chains.commands" in err
