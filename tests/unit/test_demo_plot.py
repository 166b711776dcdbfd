"""Where `oncofed demo --plot` writes its figure, checked before the network starts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from oncofed.client.demo import PLOT_FILE, check_plot_path, default_plot_path
from oncofed.kernel.errors import ConfigError


def test_the_default_is_the_temporary_folder_not_the_working_directory() -> None:
    assert default_plot_path() == Path(tempfile.gettempdir()) / PLOT_FILE


def test_a_relative_path_is_made_absolute_so_the_printed_line_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_plot_path(Path("km.svg")) == tmp_path / "km.svg"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("missing/km.png", "does not exist"),
        ("km.docx", "cannot save a figure as '.docx'"),
        (".", "cannot write"),
    ],
)
def test_paths_the_figure_cannot_go_to_are_refused(tmp_path: Path, name: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        check_plot_path(tmp_path / name)
    assert caught.value.rule == "demo.plot" and "--plot" in caught.value.fix
