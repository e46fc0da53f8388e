"""Running `builder` in this process, as the bad-input tests do: its exit code, its `error:` lines, and a check
that nothing was left behind in the output folder, the inputs' folders or TMPDIR."""
from __future__ import annotations

import pathlib
import tempfile

from builder.cli import main


def listing(folder: pathlib.Path) -> set[str]:
    """Every path under `folder`, relative to it (empty where it does not exist)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


def run_cli(argv: list[str], capsys, tmp_path: pathlib.Path, monkeypatch,
            watched: tuple[pathlib.Path, ...] = ()) -> tuple[int, list[str], str]:
    """The command in this process, in `tmp_path/out` with TMPDIR `tmp_path/tmp`; asserts that nothing was left
    in either, in the folders of arguments under `tmp_path`'s parent, or in `watched`."""
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(out)
    folders = [out, scratch, *watched] + sorted({pathlib.Path(a).parent for a in argv
                                                 if a.startswith(str(tmp_path.parent))})
    before = {str(folder): listing(folder) for folder in folders}
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    for folder in folders:
        assert listing(folder) == before[str(folder)], f"left behind in {folder}"
    return code, errors, captured.err


def reader_argv(command: str, bundle: pathlib.Path) -> list[str]:
    """The command line of a command that reads a bundle: verify, bench (briefly) or push (to a closed port)."""
    return {"verify": ["verify", str(bundle)], "bench": ["bench", str(bundle), "--duration", "0.1"],
            "push": ["push", str(bundle), "127.0.0.1:9/det:1", "--insecure"]}[command]


def assert_one_error_line(code: int, errors: list[str], stderr: str, expected_code: int, message: str) -> None:
    """The command exited with `expected_code` after exactly one `error:` line holding `message`, no traceback."""
    assert code == expected_code, stderr
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert message.lower() in errors[0].lower(), errors[0]
