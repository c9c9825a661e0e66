"""Run a Flex Template locally, the way ``gcloud dataflow flex-template run`` runs it on Dataflow.

The parameters are checked against the template's committed ``metadata.json`` — what Dataflow
itself checks — so a parameter set that passes here passes there: a missing required parameter,
an unknown name or a regex mismatch fails with ONE error that lists every offending parameter
with its help text (exit code 2). Then the pipeline's ``run()`` gets ``--name=value`` flags, as
the Dataflow launcher passes them, plus ``--runner=FnApiRunner`` (the DirectRunner's local engine,
see :data:`LOCAL_RUNNER`) and ``--streaming`` when the template is a streaming one. Endpoints
come from the environment (``eval "$(scripts/stack.sh env)"`` for the local stack).

Usage::

    python -m pipelines.template_launcher list
    python -m pipelines.template_launcher run kafka_to_bigquery \\
        --parameters bootstrapServers=127.0.0.1:9092,inputTopic=transactions \\
        --parameters schemaPath=transforms/decoding/schemas/creditcard.json,startOffset=earliest \\
        --parameters outputTableSpec=kafka-beam-ml-local:fraud.transactions \\
        [--streaming | --no-streaming] [-- --direct_num_workers=2 ...]

As with gcloud, ``--parameters`` may repeat, and ``^DELIM^`` at its start switches the separator
for values that contain commas: ``--parameters '^;^bootstrapServers=a:9092,b:9092;inputTopic=t'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines.common.options import OptionError
from pipelines.flex_template.metadata import load_metadata
from pipelines.flex_template.registry import TEMPLATES, get_template

__all__ = [
    "ParameterError",
    "parse_parameters",
    "check_parameters",
    "pipeline_argv",
    "Launch",
    "prepare",
    "EXIT_BAD_PARAMETERS",
    "LOCAL_RUNNER",
    "main",
]

_LOGGER = logging.getLogger(__name__)

#: Exit status for a parameter set the template refuses (argparse's usage-error code).
EXIT_BAD_PARAMETERS = 2

#: The DirectRunner's in-process engine, named directly: the DirectRunner itself first tries to
#: download the Prism runner (a run-time download; offline it fails and falls back to this).
LOCAL_RUNNER = "FnApiRunner"


class ParameterError(ValueError):
    """Parameters that do not fit a template; ``problems`` has one line per offending parameter."""

    def __init__(self, template: str, problems: Sequence[str]) -> None:
        self.template = template
        self.problems = tuple(problems)
        super().__init__(
            f"invalid parameters for template {template}:\n  " + "\n  ".join(self.problems)
        )


def parse_parameters(values: Iterable[str]) -> dict[str, str]:
    """Merge ``--parameters`` values (gcloud ``ArgDict`` syntax) into one dict; later wins.

    Raises ``ValueError`` for an item without ``=`` or with an empty name.
    """
    result: dict[str, str] = {}
    for value in values:
        delimiter = ","
        escaped = re.match(r"\^([^^]+)\^", value)
        if escaped:
            delimiter = escaped.group(1)
            value = value[escaped.end() :]
        for item in value.split(delimiter):
            if not item:
                continue
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"bad parameter {item!r}: expected NAME=VALUE")
            result[name.strip()] = text
    return result


def _secret_names(template_name: str) -> frozenset[str]:
    return frozenset(o.name for o in get_template(template_name).options() if o.secret)


def check_parameters(
    template_name: str,
    metadata: Mapping[str, Any],
    parameters: Mapping[str, str],
    *,
    secrets: frozenset[str] = frozenset(),
) -> None:
    """Check ``parameters`` as Dataflow does; raise :class:`ParameterError` listing all problems.

    Regexes must match the whole value (Java ``Pattern.matches``). Values of ``secrets`` are
    never echoed.
    """
    declared = {param["name"]: param for param in metadata["parameters"]}
    problems = []
    for name, param in declared.items():
        if name not in parameters and not param.get("isOptional", False):
            problems.append(f"{name}: required parameter is missing. {param['helpText']}")
    for name, value in parameters.items():
        param = declared.get(name)
        if param is None:
            problems.append(
                f"{name}: unknown parameter; this template accepts: {', '.join(declared)}"
            )
            continue
        for pattern in param.get("regexes", ()):
            if not re.fullmatch(pattern, value):
                shown = "***" if name in secrets else repr(value)
                problems.append(f"{name}={shown} does not match {pattern!r}. {param['helpText']}")
                break
    if problems:
        raise ParameterError(template_name, problems)


def pipeline_argv(
    parameters: Mapping[str, str], *, streaming: bool, pipeline_args: Sequence[str] = ()
) -> list[str]:
    """The flags the pipeline's ``run()`` gets, as the Dataflow launcher would pass them."""
    argv = [f"--{name}={value}" for name, value in parameters.items()]
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in pipeline_args):
        argv.append(f"--runner={LOCAL_RUNNER}")
    if streaming:
        argv.append("--streaming")
    argv.extend(pipeline_args)
    return argv


@dataclasses.dataclass(frozen=True)
class Launch:
    """A validated launch: which pipeline to run with which flags."""

    template: str
    module: str
    argv: tuple[str, ...]
    streaming: bool

    def run(self) -> Any:
        """Run the pipeline's ``run()`` in this process and return its result."""
        _LOGGER.info(
            "launching template %s (%s, %s)",
            self.template,
            self.module,
            "streaming" if self.streaming else "batch",
        )
        return importlib.import_module(self.module).run(list(self.argv))


def prepare(
    name: str,
    parameters: Mapping[str, str],
    *,
    streaming: bool | None = None,
    pipeline_args: Sequence[str] = (),
) -> Launch:
    """Validate ``parameters`` against template ``name``; ``streaming=None`` follows its metadata.

    Raises ``KeyError`` for an unknown template and :class:`ParameterError` for bad parameters.
    """
    template = get_template(name)
    metadata = load_metadata(name)
    check_parameters(name, metadata, parameters, secrets=_secret_names(name))
    if streaming is None:
        streaming = bool(metadata.get("streaming", False))
    argv = pipeline_argv(parameters, streaming=streaming, pipeline_args=pipeline_args)
    return Launch(name, template.module, tuple(argv), streaming)


@dataclasses.dataclass(frozen=True)
class _Command:
    args: argparse.Namespace
    pipeline_args: tuple[str, ...]


def _parse(argv: Sequence[str]) -> _Command:
    argv = list(argv)
    pipeline_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, pipeline_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.template_launcher",
        description="Run a Flex Template locally (FnApiRunner, the DirectRunner's engine).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the templates")
    run = commands.add_parser("run", help="validate parameters and run a template")
    run.add_argument("name", help="template name (a folder under templates/)")
    run.add_argument(
        "--parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE,...",
        help="template parameters, as for gcloud dataflow flex-template run (repeatable)",
    )
    run.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force streaming or batch mode (default: the template's metadata)",
    )
    return _Command(parser.parse_args(argv), tuple(pipeline_args))


def _refuse(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return EXIT_BAD_PARAMETERS


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    command = _parse(sys.argv[1:] if argv is None else argv)
    if command.args.command == "list":
        for template in TEMPLATES:
            mode = "streaming" if template.streaming else "batch"
            sys.stdout.write(f"{template.name}\t{mode}\t{template.title}\n")
        return 0
    try:
        planned = prepare(
            command.args.name,
            parse_parameters(command.args.parameters),
            streaming=command.args.streaming,
            pipeline_args=command.pipeline_args,
        )
    except KeyError as err:
        return _refuse(err.args[0])
    except ValueError as err:  # ParameterError or a malformed --parameters item
        return _refuse(str(err))
    try:
        planned.run()
    except OptionError as err:  # the pipeline's own option checks (beyond what metadata says)
        return _refuse(str(err))
    return 0
