"""The release report: Markdown, HTML and JSON, three files written into a folder beside what it holds."""
from __future__ import annotations

import contextlib
import html
import json
import os
import pathlib

COLUMNS = ("#", "bundle", "status", "digest", "size", "time", "node", "attempts", "accuracy")
#: the files of a report: they belong to the release, so a run of it replaces its own and nothing else
REPORT_FILES = ("report.json", "report.html", "report.md")
#: a report.json larger than this is no report of builder's (1,024 bundles make about 1 MB)
MAX_REPORT_BYTES = 16 * 2 ** 20


def markdown(result) -> str:
    from builder.core.tables import markdown_table

    spec = result.spec
    rows = result.rows()
    lines = [f"# Release {spec.name} {spec.version}", "",
             f"- index: `{result.index}`" if result.index else "- index: not pushed (a build failed)",
             f"- registry: `{spec.repository}`",
             f"- bundles: {len(result.planned)} ({len(result.built)} built, {len(result.cached)} cached, "
             f"{result.failed_builds} failed)", "",
             markdown_table(COLUMNS, [[_cell(row[c]) for c in COLUMNS] for row in rows])]
    failures = [(p, row) for p, row in zip(result.planned, rows) if row["error"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- bundle {p.number} ({p.label}): {_cell(row['error'])}" for p, row in failures]
    lines += ["", "Build keys:", ""] + [f"- {p.number}: `{p.key}`" for p in result.planned]
    return "\n".join(lines) + "\n"


def html_page(result) -> str:
    spec = result.spec
    rows = result.rows()
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr class='{}'>{}</tr>".format(e(row["status"]), "".join(f"<td>{e(row[c])}</td>" for c in COLUMNS))
                   for row in rows)
    failures = "".join(f"<li>bundle {p.number} ({e(p.label)}): {e(row['error'])}</li>"
                       for p, row in zip(result.planned, rows) if row["error"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Release {e(spec.name)} {e(spec.version)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:left}}tr.failed{{background:#fdd}}tr.cached{{color:#555}}code{{font-size:90%}}</style>
</head><body>
<h1>Release {e(spec.name)} {e(spec.version)}</h1>
<p>Index: <code>{e(result.index or "not pushed (a build failed)")}</code><br>Registry: <code>{e(spec.repository)}</code><br>
{len(result.planned)} bundles: {len(result.built)} built, {len(result.cached)} cached, {result.failed_builds} failed</p>
<table><tr>{head}</tr>{body}</table>
{f"<h2>Failures</h2><ul>{failures}</ul>" if failures else ""}
</body></html>
"""


def as_json(result) -> str:
    spec = result.spec
    bundles = []
    for p, row in zip(result.planned, result.rows()):
        o = result.outcomes.get(p.key)
        bundles.append({"number": p.number, "bundle": p.label, "values": p.values, "build_key": p.key,
                        "status": row["status"], "digest": o.digest if o else None, "size": o.size if o else None,
                        "seconds": o.seconds if o else None, "node": row["node"] or None,
                        "attempts": o.attempts if o else None, "accuracy": row["accuracy"] or None,
                        "error": row["error"] or None, "warnings": o.warnings if o else []})
    return json.dumps({"name": spec.name, "version": spec.version, "repository": spec.repository,
                       "index": result.index, "bundles": bundles}, indent=2, default=str) + "\n"


def check_report_dir(folder: pathlib.Path, spec) -> None:
    """Refuse, before any build or push, a report folder the report cannot go into: a file, one under a file, one
    that cannot be written, or one holding a report file that is not this release's own (REPORT_FILES)."""
    from builder.core.errors import UserError
    from builder.core.files import check_writable

    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"report folder '{folder}' is not a folder")
    check_writable(folder / "report.md")  # refuses a file in the path too
    if _holds_report_of(folder, spec):
        return
    for name in REPORT_FILES:
        if os.path.lexists(folder / name):
            raise UserError(f"'{folder / name}' exists and is not the report of release {spec.name} {spec.version}",
                            hint="give another --report-dir, or move the file away")


def write_report(result, folder: pathlib.Path) -> pathlib.Path:
    """report.json, report.html and report.md in `folder`, each written atomically; nothing else in the folder is
    touched. A release's own earlier report is replaced; any other file of those names is not (see
    check_report_dir), even one that appeared while the release ran."""
    from builder.core.errors import UserError
    from builder.core.files import atomic_file

    folder = pathlib.Path(folder)
    replace = _holds_report_of(folder, result.spec)
    pages = {"report.json": as_json(result), "report.html": html_page(result), "report.md": markdown(result)}
    try:
        # all three are written before any is moved into place; report.json, which says whose report the folder
        # holds, moves first (the last one entered)
        with contextlib.ExitStack() as files:
            for name in reversed(REPORT_FILES):
                files.enter_context(atomic_file(folder / name, replace=replace)).write(pages[name].encode("utf-8"))
    except UserError as e:
        if e.hint and "--force" in e.hint:  # a file of that name appeared meanwhile; release has no --force
            raise UserError(str(e), hint="give another --report-dir, or move the file away") from None
        raise
    return folder / "report.md"


def _holds_report_of(folder: pathlib.Path, spec) -> bool:
    """Whether `folder`'s report.json is a report of this release (same repository, name and version)."""
    path = folder / "report.json"
    try:
        if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:  # (a FIFO would never end)
            return False
        said = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(said, dict) and (said.get("repository"), said.get("name"), said.get("version")) == (
        spec.repository, spec.name, spec.version)


def _cell(text: str) -> str:
    """Text as a markdown table cell shows it: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")
