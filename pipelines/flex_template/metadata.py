"""Flex Template metadata generated from the pipelines' ``OPTIONS`` declarations.

Template-level facts (folder name, title, description, streaming, pipeline module) live in the
small :data:`TEMPLATES` registry; every parameter comes from the pipeline's :class:`Option` list,
so ``templates/<name>/metadata.json`` cannot drift from the flags the pipeline really parses.
The same code renders the parameter tables in ``docs/templates.md`` and ``README.md`` and, through
:mod:`pipelines.flex_template.image`, each template's ``Dockerfile``/``main.py``, the shared
``templates/requirements.txt`` and ``cloudbuild.yaml``.

Usage::

    python -m pipelines.template_metadata --write   # regenerate every generated file
    python -m pipelines.template_metadata --check   # exit 1 listing stale files and lock problems
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.cloud.dataflow_v1beta3.types import ParameterType

from pipelines.common.options import Option
from pipelines.flex_template import image as template_image
from pipelines.flex_template.registry import REPO_ROOT, TEMPLATES, Template, get_template

__all__ = [
    "DOC_PATHS",
    "parameter_metadata",
    "template_metadata",
    "render_metadata_json",
    "load_metadata",
    "parameters_markdown",
    "render_doc",
    "generated_files",
    "stale_files",
    "main",
]

_LOGGER = logging.getLogger(__name__)

#: Documents with a generated parameter-table block (between the markers below).
DOC_PATHS = (REPO_ROOT / "docs" / "templates.md", REPO_ROOT / "README.md")

_DOC_BEGIN = "<!-- BEGIN GENERATED PARAMETERS (python -m pipelines.template_metadata --write) -->"
_DOC_END = "<!-- END GENERATED PARAMETERS -->"

#: Value patterns implied by an option's Python type; Dataflow checks them before launching.
_TYPE_REGEXES: dict[type, str] = {
    int: r"[+-]?[0-9]+",
    float: r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?",
    bool: r"(?i)(true|false|yes|no|y|n|on|off|1|0)",
}
_TYPE_PARAM_TYPES: dict[type, str] = {int: "NUMBER", float: "NUMBER", bool: "BOOLEAN"}


def _choices_regex(choices: Sequence[str]) -> str:
    return "|".join(re.escape(choice) for choice in choices)


def _default_text(option: Option) -> str | None:
    if option.default is None:
        return None
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    return str(option.default)


def parameter_metadata(option: Option) -> dict[str, Any]:
    """Dataflow ``ParameterMetadata`` (JSON form) for one option.

    Choices become an ``ENUM`` with ``enumOptions`` plus an alternation regex (so Dataflow also
    rejects bad values at launch); int/float/bool options get ``NUMBER``/``BOOLEAN`` and a value
    regex (a bool's choices, if any, are its regex); anything else is ``TEXT``. An explicit
    ``Option.param_type`` wins; it must name a Dataflow ``ParameterType`` (``ValueError``
    otherwise: ``flex-template build`` would refuse the file).
    """
    regexes = list(option.regexes)
    if option.choices is not None:
        regexes.insert(0, _choices_regex(option.choices))
    elif option.type in _TYPE_REGEXES:
        regexes.insert(0, _TYPE_REGEXES[option.type])
    enum = option.choices is not None and option.type is not bool
    param_type = option.param_type or _TYPE_PARAM_TYPES.get(option.type)
    param_type = param_type or ("ENUM" if enum else "TEXT")
    if param_type not in ParameterType.__members__:
        raise ValueError(
            f"option {option.name}: param_type {param_type!r} is not a Dataflow ParameterType "
            f"({', '.join(ParameterType.__members__)})"
        )
    help_text = option.help
    if option.example is not None:
        help_text = f"{help_text} For example, `{option.example}`."
    parameter: dict[str, Any] = {
        "name": option.name,
        "label": option.label,
        "helpText": help_text,
        "isOptional": not option.required,
    }
    if regexes:
        parameter["regexes"] = regexes
    parameter["paramType"] = param_type
    if enum and param_type == "ENUM":
        parameter["enumOptions"] = [{"value": choice} for choice in option.choices]
    default = _default_text(option)
    if default is not None:
        parameter["defaultValue"] = default
    return parameter


def template_metadata(
    template: Template, options: Sequence[Option] | None = None
) -> dict[str, Any]:
    """Dataflow ``TemplateMetadata`` (JSON form) for ``template``."""
    decls = template.options() if options is None else tuple(options)
    metadata: dict[str, Any] = {"name": template.title, "description": template.description}
    if template.streaming:
        metadata["streaming"] = True
    metadata["parameters"] = [parameter_metadata(option) for option in decls]
    return metadata


def render_metadata_json(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"


def load_metadata(name: str) -> dict[str, Any]:
    """The committed ``templates/<name>/metadata.json`` (what Dataflow would see)."""
    return json.loads(get_template(name).metadata_path.read_text(encoding="utf-8"))


def _cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def parameters_markdown(metadata: Mapping[str, Any]) -> str:
    """A Markdown table of ``metadata``'s parameters (rendered from the JSON, not the options)."""
    lines = [
        "| Parameter | Required | Default | Type | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for param in metadata["parameters"]:
        default = param.get("defaultValue")
        lines.append(
            "| `{}` | {} | {} | {} | **{}**. {} |".format(
                param["name"],
                "no" if param.get("isOptional") else "**yes**",
                f"`{_cell(default)}`" if default is not None else "",
                param.get("paramType", "TEXT"),
                _cell(param["label"]),
                _cell(param["helpText"]),
            )
        )
    return "\n".join(lines) + "\n"


def render_doc(current: str, metadata_by_template: Mapping[Template, Mapping[str, Any]]) -> str:
    """``current`` with the generated block between the markers replaced."""
    start = current.find(_DOC_BEGIN)
    end = current.find(_DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"the document lacks the markers {_DOC_BEGIN!r} … {_DOC_END!r}")
    sections = []
    for template, metadata in metadata_by_template.items():
        mode = "streaming" if template.streaming else "batch"
        sections.append(
            f"### `{template.name}` — {metadata['name']}\n\n"
            f"{metadata['description']}\n\n"
            f"Mode: {mode}. Pipeline: `{template.module}`. "
            f"Image: `{template.image_name}`. Metadata: `templates/{template.name}/metadata.json`."
            f"\n\n{parameters_markdown(metadata)}"
        )
    block = "\n".join(sections) if sections else "No templates are registered yet.\n"
    return current[: start + len(_DOC_BEGIN)] + "\n\n" + block + "\n" + current[end:]


def generated_files() -> dict[Path, str]:
    """Every file generated from the registry and the options, with its expected content.

    ``templates/requirements.txt`` is not among them: it pins the venv it was written from, and
    :func:`pipelines.flex_template.image.lock_problems` checks it against setup.py instead.
    """
    files: dict[Path, str] = {}
    metadata_by_template = {}
    for template in TEMPLATES:
        metadata = template_metadata(template)
        metadata_by_template[template] = metadata
        files[template.metadata_path] = render_metadata_json(metadata)
        files[template.directory / "main.py"] = template_image.main_py(template)
        files[template.directory / "Dockerfile"] = template_image.dockerfile(template)
    files[template_image.CLOUDBUILD_PATH] = template_image.cloudbuild_yaml(TEMPLATES)
    for path in DOC_PATHS:
        files[path] = render_doc(path.read_text(encoding="utf-8"), metadata_by_template)
    return files


def stale_files(files: Mapping[Path, str]) -> list[Path]:
    """The paths whose content on disk differs from ``files``."""
    return [
        path
        for path, text in files.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.template_metadata")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    files = generated_files()
    if args.check:
        problems = [f"stale: {path.relative_to(REPO_ROOT)}" for path in stale_files(files)]
        problems += [f"templates/requirements.txt: {p}" for p in template_image.lock_problems()]
        for problem in problems:
            sys.stderr.write(problem + "\n")
        if problems:
            sys.stderr.write("run: python -m pipelines.template_metadata --write\n")
        return 1 if problems else 0
    files[template_image.REQUIREMENTS_PATH] = template_image.requirements_txt()
    for path in stale_files(files):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        _LOGGER.info("wrote %s", path.relative_to(REPO_ROOT))
    return 0
