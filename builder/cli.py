"""The `builder` command: parse, call the API, print. Exit codes are decided here and nowhere else."""
from __future__ import annotations

import json
import logging
import sys

import click

from builder import __version__
from builder.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="builder")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def cli(quiet: bool) -> None:
    """Turn trained YOLO-NAS / PP-YOLOE detectors into deployable bundles."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log = logging.getLogger("builder")
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    logging.addLevelName(logging.INFO, "note")
    logging.addLevelName(logging.WARNING, "warning")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_command(as_json: bool) -> None:
    """List the architectures and variants builder knows."""
    from builder.models.registry import DEFAULT_NUM_CLASSES, parameter_count, variants

    rows = []
    for variant, family in variants().items():
        rows.append({
            "name": variant,
            "family": family.name,
            "parameters": parameter_count(variant),
            "num_classes": DEFAULT_NUM_CLASSES,
            "input_size": list(family.input_size),
            "confidence_threshold": family.default_confidence,
            "nms_threshold": family.default_iou,
            "channel_order": family.preprocessing.channel_order,
            "resize": family.preprocessing.resize,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "parameters", "input", "conf", "iou", "preprocessing")
    table = [header] + [(r["name"], r["family"], f"{r['parameters']:,}", "x".join(map(str, r["input_size"])),
                         f"{r['confidence_threshold']:g}", f"{r['nms_threshold']:g}",
                         f"{r['channel_order']}, {r['resize']}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())


@cli.command("fetch")
@click.option("--model", "variant", required=True, help="Variant, e.g. yolo_nas_s (see 'builder models').")
@click.option("--weights", required=True, help="Checkpoint file, http(s) URL, or 'coco' for the published weights.")
@click.option("--num-classes", type=int, default=None, help="Class count (default: read from the checkpoint).")
def fetch_command(variant: str, weights: str, num_classes: int | None) -> None:
    """Download (into the cache) and check that weights load strictly into a variant."""
    from builder.models.download import sha256_of
    from builder.models.registry import build, resolve_weights

    path = resolve_weights(variant, weights)
    model = build(variant, num_classes=num_classes, checkpoint_path=str(path))
    click.echo(f"{variant}: {model.num_classes} classes, {sum(p.numel() for p in model.parameters()):,} parameters")
    click.echo(f"weights: {path} ({path.stat().st_size:,} bytes, sha256 {sha256_of(path)})")
    if model.class_names:
        click.echo(f"class names: {', '.join(model.class_names[:8])}{' ...' if len(model.class_names) > 8 else ''}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command and maps its failure to an exit code and one line on stderr."""
    try:
        cli.main(args=argv, prog_name="builder", standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e.one_line()}", err=True)
        return EXIT_USER_ERROR
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
        click.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception:  # our bug: keep the traceback, it is what a bug report needs
        import traceback

        traceback.print_exc()
        click.echo(f"builder {__version__} hit an internal error (a bug): please report it with the traceback above",
                   err=True)
        return EXIT_INTERNAL_ERROR
    return 0


def entry_point() -> None:
    sys.exit(main())
