"""``kvtier generate``."""

import pytest

from clients.cli import main


def test_unknown_model_path_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["generate", "--prompt", "hi", "--model", str(tmp_path / "none.gguf")]) == 2
    assert "none.gguf' does not exist" in capsys.readouterr().err


def test_max_tokens_zero_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["generate", "--prompt", "hi", "--max-tokens", "0", "--model", str(tmp_path)]) == 2
    assert "max_tokens must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_prints_the_greedy_completion(capsys):
    args = ["generate", "--prompt", "What is the capital of France?", "--chat", "--max-tokens", "20",
            "--dtype", "float32"]
    assert main(args) == 0
    assert "Paris" in capsys.readouterr().out
