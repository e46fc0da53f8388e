"""Plain-text tables: fixed-width columns for the terminal, markdown for the benchmarks."""
from __future__ import annotations


def text_table(rows: list[tuple[str, ...]], align: str) -> list[str]:
    """Rows as lines of columns two spaces apart, each column padded 'l'(eft) or 'r'(ight) per `align`.

    Trailing padding is stripped, so a left-aligned last column leaves no spaces at the ends of lines.
    """
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    pad = {"l": str.ljust, "r": str.rjust}
    return ["  ".join(pad[a](cell, w) for cell, w, a in zip(row, widths, align)).rstrip() for row in rows]


def markdown_table(header, rows) -> str:
    """A markdown table, columns padded to their widest cell (cells are str()-ed)."""
    lines = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
