"""The ``probret`` command: a click group whose subcommands live in their own modules and are
imported lazily, so ``probret search`` never pays for (or needs) torch."""

from __future__ import annotations

import importlib
import importlib.util  # find_spec; `import importlib` alone does not load it (non-editable installs crashed)
import os
import sys

import click

from probret.engine.errors import ProbretError

# name -> "module:attribute"; a subcommand's module is imported only when it is invoked.
SUBCOMMANDS = {
    "synth": ("probret.cli.synth_cmd:synth", "Generate a procedural video world (mp4 + MSRVTT-format annotations)."),
    "train": ("probret.cli.train_cmd:train", "Fine-tune a retrieval model (same as probret-train)."),
    "eval": ("probret.cli.eval_cmd:eval_cmd", "Evaluate a checkpoint on a dataset split."),
    "export": ("probret.cli.export_cmd:export", "Export a checkpoint to an ONNX / TensorRT bundle."),
    "index": ("probret.cli.search_cmd:index", "Index a folder of videos."),
    "search": ("probret.cli.search_cmd:search", "Rank the videos of a folder for text queries."),
    "demo": ("probret.cli.demo_cmd:demo", "Run the end-to-end demo on a procedural world."),
    "serve": ("probret.cli.serve_cmd:serve", "Serve a search page and JSON API for a folder (needs probret[serve])."),
    "shards": ("probret.cli.shards_cmd:shards", "Merge, describe and compact indexes written independently."),
    "data": ("probret.cli.data_cmd:data", "Dataset utilities: check a layout, convert MSVD's caption pickle."),
    "demo-model": ("probret.cli.demo_model_cmd:demo_model", "Rebuild the shipped demo model (make demo-model)."),
}


#: Subcommands after which the console script skips Python's interpreter teardown (:func:`main`).
EXIT_FAST = frozenset({"search"})


class LazyGroup(click.Group):
    invoked: str | None = None  # the subcommand this process ran (resolve_command)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        self.invoked = name
        return name, cmd, rest

    def list_commands(self, ctx):
        return sorted(name for name, (target, _) in SUBCOMMANDS.items() if _importable(target))

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("probret.cli."):
                return None  # subcommand not built yet
            raise click.ClickException(
                f"'probret {name}' needs the Python package '{exc.name}', which is not installed; "
                f"install the extra it belongs to, e.g. pip install 'probret[train,export]'"
            ) from exc
        return getattr(module, attr)


def _importable(target: str) -> bool:
    module_name = target.split(":")[0]
    return importlib.util.find_spec(module_name) is not None


def run_guarded(command: click.Command, args=None, prog_name=None) -> None:
    """Invoke a click command; a ProbretError becomes one stderr line and its exit code."""
    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ProbretError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="probret")
def _group():
    """probret: probabilistic text-video retrieval (train, export, search)."""


def cli(args=None) -> None:
    """The ``probret`` command, in this process (tests call it with ``args``)."""
    run_guarded(_group, args=args, prog_name="probret")


def main() -> None:
    """Console entry point of ``probret``: :func:`cli`, then, after a subcommand in
    :data:`EXIT_FAST`, ``os._exit`` with its exit code once stdout and stderr are flushed.

    Why: tearing the interpreter down (module dictionaries, numpy and ONNX Runtime objects, the
    sessions' thread pools) after a ``probret search`` had printed everything made it 0.579 s
    instead of 0.484 (wall medians, bench/cli_latency.py; docs/benchmarks.md, "CLI latency");
    ``python -c "import numpy, onnxruntime"`` spends ~20 ms on its own teardown. It is safe there because nothing is left to finish: the search closed its index
    reader (and any writer of its update) inside the command, SQLite and the shard files have
    nothing unwritten, the kernel releases locks and descriptors, and idle pair-graph threads
    hold no work. A failed flush (a closed pipe) takes the ordinary exit, which reports it as
    before; so do an exit with a message and any exception."""
    try:
        cli()
        code = 0
    except SystemExit as exc:
        if _group.invoked not in EXIT_FAST or not (exc.code is None or isinstance(exc.code, int)):
            raise
        code = exc.code or 0
    if _group.invoked not in EXIT_FAST:
        return
    import logging

    try:
        logging.shutdown()  # flushes every handler (they write to stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    main()
