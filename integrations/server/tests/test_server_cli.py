"""`align-chains serve` argument handling: bad settings fail before any model loads."""

from __future__ import annotations

import sys

import pytest

from align_chains import cli


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("align_chains_server.service.load_policy", refuse)
    monkeypatch.setattr("align_chains_server.service.load_reward", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "nope"], "Unknown strategy 'nope'"),
        (["-o", "beams=3"], "Unknown option(s) ['beams']"),
        (["-o", "n=0"], "invalid n=0"),
        (["--strategy", "sea", "-o", "n=4"], "Unknown option(s) ['n']"),
        (["--max-concurrency", "0"], "--max-concurrency must be positive"),
        (["--max-decode-tokens", "0"], "--max-decode-tokens must be positive"),
        (["--max-batch", "0"], "--max-batch must be positive"),
        (["--batch-window-ms", "-1"], "--batch-window-ms must be >= 0"),
        (["--batch-delay-factor", "-0.5"], "--batch-delay-factor must be >= 0"),
        (["--host", "0.0.0.0"], "no API key is set"),
        (["--strategy", "darwin", "--limit", "cycles=2"], "default cycles=3 of strategy 'darwin' is above"),
        (["--host", "192.168.1.20"], "--allow-unauthenticated"),
    ],
)
def test_bad_serve_settings_fail_before_loading(no_loading, capsys, argv, message):
    assert cli.main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_reward_spec_errors():
    from align_chains_server.service import resolve_reward_spec

    from align_chains.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="cannot import module 'no_such_module_xyz'"):
        resolve_reward_spec("python:no_such_module_xyz:fn")
    with pytest.raises(InvalidInputError, match="has no callable 'nope'"):
        resolve_reward_spec("python:os.path:nope")
    assert resolve_reward_spec("python:os.path:join") is __import__("os").path.join
    # the older bare form still resolves, with a warning naming the one syntax
    with (
        pytest.warns(FutureWarning, match="write 'python:no_such_module_xyz:fn'"),
        pytest.raises(InvalidInputError, match="cannot import module 'no_such_module_xyz'"),
    ):
        resolve_reward_spec("no_such_module_xyz:fn")
    with (
        pytest.warns(FutureWarning, match="write 'python:os.path:nope'"),
        pytest.raises(InvalidInputError, match="has no callable 'nope'"),
    ):
        resolve_reward_spec("os.path:nope")
    with pytest.warns(FutureWarning, match="write 'python:os.path:join'"):
        assert resolve_reward_spec("os.path:join") is __import__("os").path.join
    assert resolve_reward_spec("judge:my-model") == "judge:my-model"  # load_reward's own form
    assert resolve_reward_spec("minilm") == "minilm"


def test_serve_without_the_server_package_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "align_chains_server.cli", None)  # import fails as if not installed
    assert cli.main(["serve", "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e integrations/server" in err


def test_models_that_cannot_load_are_clear_errors(tiny_policy_dir, capsys):
    """Loading happens before the port is bound: a bad --policy or --reward exits 2 with the reason."""
    assert cli.main(["serve", "--policy", "/nonexistent/policy-dir", "--port", "1"]) == 2
    assert "/nonexistent/policy-dir" in capsys.readouterr().err
    assert (
        cli.main(["serve", "--policy", str(tiny_policy_dir), "--reward", "python:no_such_module_xyz:fn"]) == 2
    )
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    with pytest.warns(FutureWarning, match="write 'python:no_such_module_xyz:fn'"):
        assert cli.main(["serve", "--policy", str(tiny_policy_dir), "--reward", "no_such_module_xyz:fn"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err


def test_non_loopback_binds_need_a_key_or_an_explicit_flag(no_loading, monkeypatch, tmp_path):
    from align_chains_server.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.2") and not is_loopback("myhost")
    # with a key, or with the explicit flag, the refusal is gone (loading is next, and refused here)
    key = tmp_path / "key"
    key.write_text("secret\n")
    for extra in (["--api-key-file", str(key)], ["--allow-unauthenticated"]):
        with pytest.raises(AssertionError, match="a model was loaded"):
            cli.main(["serve", "--host", "0.0.0.0", *extra])


def test_the_server_registers_serve_for_the_core_cli():
    """`align-chains serve` reaches the server through its entry point, not an import in the core."""
    from importlib.metadata import entry_points

    from align_chains_server.cli import main

    (command,) = entry_points(group=cli.COMMANDS_GROUP, name="serve")
    assert command.load() is main
