"""What the ``gwc`` command modules share: failing with exit 1, loading a valid registry or a bundle,
the common arguments, and the collector pause of the commands that build large trees.

Loading a registry, reading bundles and compiling are imported by the functions that do them: a
command starts with only what it uses (``gwc validate`` without the compiler and bundle reading,
``gwc approvals`` without the registry and pydantic).
"""
from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gwc.compiler.build.diagnostics import render

if TYPE_CHECKING:
    from gwc.compiler.build.registry import Registry
    from gwc.runtime.audit.objects import StoreUrl
    from gwc.runtime.bundle.format import BundlePayload
    from gwc.runtime.bundle.read import Bundle


class _TrailArgument(click.ParamType):
    """A trail file, or ``s3://bucket[/prefix]``: the shipped files under it (listed later, and
    only then is boto3 loaded)."""

    name = "FILE|s3://BUCKET[/PREFIX]"
    _file = click.Path(exists=True, dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path | StoreUrl:
        if not isinstance(value, str):  # converted already (a default, a second pass)
            return value  # type: ignore[no-any-return]
        if "://" in value:
            from gwc.runtime.audit.objects import StoreUrl, StoreUrlError

            try:
                return StoreUrl.parse(value)
            except StoreUrlError as exc:
                self.fail(f"{exc}: give trail files, or s3://bucket/prefix", param, ctx)
        return self._file.convert(value, param, ctx)  # type: ignore[no-any-return]


TRAIL_FILES = click.argument("files", nargs=-1, required=True, type=_TrailArgument())
ROOT = click.argument("root", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
TRUST = click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="Trusted public key (PEM); repeat for rotation.")

Command = TypeVar("Command", bound=Callable[..., Any])


def batch_job(command: Command) -> Command:
    """Run the command with CPython's cyclic collector paused (and restored after, for in-process
    callers). Such a command is a short batch job that builds large acyclic trees (a big registry
    is millions of objects, all alive until exit); the collector would rescan them over and over:
    8 s instead of 2 s to parse 4,000 files. Reference counting still frees memory."""
    @functools.wraps(command)
    def paused(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return paused  # type: ignore[return-value]  # same signature: functools.wraps keeps it


def fail(message: str) -> NoReturn:
    click.echo(f"gwc: {message}", err=True)
    sys.exit(1)


def load_valid(root: Path) -> Registry:
    from gwc.compiler.build.registry import load_registry

    registry = load_registry(root)
    if not registry.ok:
        click.echo(render(registry.diagnostics, len(registry.files), "text"), err=True)
        sys.exit(1)
    return registry


def open_bundle(path: str, trust: tuple[str, ...]) -> Bundle:
    from gwc.runtime.bundle.read import BundleError, load_bundle, read_file, read_unverified, trusted_keys

    try:
        data = read_file(path)
        return load_bundle(data, trusted_keys(trust)) if trust else read_unverified(data)
    except BundleError as exc:
        fail(f"{path}: {exc}")


def payload_of(path: str, trust: tuple[str, ...]) -> BundlePayload:
    """A side of a diff: a bundle file, or a registry folder compiled in memory (unsigned)."""
    if Path(path).is_dir():
        from gwc.compiler.build.bundle import default_revision
        from gwc.compiler.build.compile import compile_registry

        registry = load_valid(Path(path))
        return compile_registry(registry, 0, default_revision(Path(path), registry.input_paths()))
    return open_bundle(path, trust).payload
