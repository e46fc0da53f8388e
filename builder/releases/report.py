"""The release report: Markdown and HTML (and the same as JSON), written together into one folder, atomically."""
from __future__ import annotations

import html
import json
import pathlib

COLUMNS = ("#", "bundle", "status", "digest", "size", "time", "node", "attempts", "accuracy")


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


def write_report(result, folder: pathlib.Path) -> pathlib.Path:
    """report.md, report.html and report.json in `folder` (replacing an earlier report of the release)."""
    from builder.core.files import staged_folder

    with staged_folder(folder, force=True) as staging:
        (staging / "report.md").write_text(markdown(result), encoding="utf-8")
        (staging / "report.html").write_text(html_page(result), encoding="utf-8")
        (staging / "report.json").write_text(as_json(result), encoding="utf-8")
    return pathlib.Path(folder) / "report.md"


def _cell(text: str) -> str:
    """Text as a markdown table cell shows it: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")
