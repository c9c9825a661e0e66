"""Flex Templates: metadata ⇔ options, Dataflow's TemplateMetadata, images and cloudbuild.yaml."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import runpy
import sys
import types

import pytest
import yaml
from google.cloud.dataflow_v1beta3.types import ParameterType, TemplateMetadata

from pipelines.common.options import KAFKA_SOURCE, Option
from pipelines.flex_template import image as template_image
from pipelines.flex_template.metadata import (
    generated_files,
    parameter_metadata,
    parameters_markdown,
    stale_files,
    template_metadata,
)
from pipelines.flex_template.registry import REPO_ROOT, TEMPLATES, TEMPLATES_DIR, Template

TEMPLATE_IDS = [t.name for t in TEMPLATES]


def _parse(metadata: dict) -> TemplateMetadata:
    """Strict parse into Dataflow's message: unknown fields or bad enum names raise."""
    return TemplateMetadata.from_json(json.dumps(metadata), ignore_unknown_fields=False)


def _committed(template: Template) -> dict:
    return json.loads(template.metadata_path.read_text(encoding="utf-8"))


# --- generator rules, on a synthetic option list ----------------------------------------------

_SYNTHETIC = (
    *KAFKA_SOURCE,
    Option("maxRecords", "Max records", "Stop after this many records.", type=int, example="10"),
    Option("threshold", "Threshold", "Score above which to alert.", type=float, default=0.5),
    Option("dryRun", "Dry run", "Do not write.", type=bool, default=False, example="true"),
    Option(
        "analyze", "Analyze", "Also analyze.", type=bool, default=False, choices=("true", "false")
    ),
    Option(
        "outputTableSpec",
        "Output table",
        "BigQuery table.",
        required=True,
        param_type="BIGQUERY_TABLE",
        regexes=(r"[^:]+:[^.]+\.[^.]+",),
        example="p:d.t",
    ),
)
_SYNTHETIC_TEMPLATE = Template("synthetic", "unused", "Synthetic", "For generator tests.", True)


def _synthetic_params() -> dict[str, dict]:
    metadata = template_metadata(_SYNTHETIC_TEMPLATE, _SYNTHETIC)
    return {p["name"]: p for p in metadata["parameters"]}


def test_choices_become_enum_with_options_and_a_regex():
    param = _synthetic_params()["securityProtocol"]
    assert param["paramType"] == "ENUM"
    assert [o["value"] for o in param["enumOptions"]] == list(KAFKA_SOURCE[1].choices)
    assert param["regexes"][0] == "PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL"
    assert param["defaultValue"] == "PLAINTEXT"
    assert param["isOptional"] is True


def test_types_become_number_and_boolean_with_value_regexes():
    params = _synthetic_params()
    assert params["maxRecords"]["paramType"] == "NUMBER"
    assert params["threshold"]["paramType"] == "NUMBER"
    assert params["threshold"]["defaultValue"] == "0.5"
    assert params["dryRun"]["paramType"] == "BOOLEAN"
    assert params["dryRun"]["defaultValue"] == "false"
    for name, good, bad in [
        ("maxRecords", "-12", "1.5"),
        ("threshold", "1e-3", "abc"),
        ("dryRun", "True", "maybe"),
    ]:
        (pattern,) = params[name]["regexes"]
        assert re.fullmatch(pattern, good) and not re.fullmatch(pattern, bad), name


def test_bool_choices_stay_boolean_with_the_choices_as_regex():
    param = _synthetic_params()["analyze"]
    assert param["paramType"] == "BOOLEAN"
    assert param["regexes"] == ["true|false"]
    assert "enumOptions" not in param


def test_explicit_param_type_required_and_example_in_help():
    param = _synthetic_params()["outputTableSpec"]
    assert param == {
        "name": "outputTableSpec",
        "label": "Output table",
        "helpText": "BigQuery table. For example, `p:d.t`.",
        "isOptional": False,
        "regexes": [r"[^:]+:[^.]+\.[^.]+"],
        "paramType": "BIGQUERY_TABLE",
    }


def test_synthetic_metadata_parses_into_dataflow_template_metadata():
    parsed = _parse(template_metadata(_SYNTHETIC_TEMPLATE, _SYNTHETIC))
    assert parsed.streaming is True
    by_name = {p.name: p for p in parsed.parameters}
    assert by_name["outputTableSpec"].param_type == ParameterType.BIGQUERY_TABLE
    assert by_name["securityProtocol"].enum_options[0].value == "PLAINTEXT"
    assert by_name["dryRun"].default_value == "false"


def test_strict_parse_rejects_what_dataflow_would_reject():
    with pytest.raises(Exception, match="paramType|NOT_A_TYPE"):
        _parse({"name": "x", "parameters": [{"name": "a", "paramType": "NOT_A_TYPE"}]})
    with pytest.raises(Exception, match="isOptinal"):
        _parse({"name": "x", "parameters": [{"name": "a", "isOptinal": True}]})


def test_param_type_must_be_a_dataflow_parameter_type():
    with pytest.raises(ValueError, match="option u: param_type 'URL' is not a Dataflow"):
        parameter_metadata(Option("u", "U", "A URL.", param_type="URL"))


def test_markdown_table_comes_from_metadata():
    table = parameters_markdown(template_metadata(_SYNTHETIC_TEMPLATE, _SYNTHETIC))
    assert "| `outputTableSpec` | **yes** |  | BIGQUERY_TABLE | **Output table**. BigQuery" in table
    assert "| `startOffset` | no | `committed` | TEXT |" in table
    escaped = parameters_markdown({"parameters": [{"name": "a", "label": "A|B", "helpText": "x"}]})
    assert "**A\\|B**" in escaped


def test_secret_password_is_optional_and_points_to_env_or_file():
    param = _synthetic_params()["saslPassword"]
    assert param["isOptional"] is True
    assert "env:" in param["helpText"] and "file:" in param["helpText"]
    assert "defaultValue" not in param


# --- the committed templates ------------------------------------------------------------------


def test_committed_generated_files_are_up_to_date():
    stale = [str(p.relative_to(REPO_ROOT)) for p in stale_files(generated_files())]
    assert stale == [], "stale; run: python -m pipelines.template_metadata --write"


def test_generated_python_fits_the_line_length():
    for path in generated_files():
        if path.suffix == ".py":
            for number, line in enumerate(path.read_text().splitlines(), 1):
                assert len(line) <= 100, f"{path}:{number}"


def test_every_template_folder_is_registered():
    folders = {p.parent.name for p in TEMPLATES_DIR.glob("*/metadata.json")}
    assert folders == {t.name for t in TEMPLATES}


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_metadata_parses_into_dataflow_template_metadata(template):
    parsed = _parse(_committed(template))
    assert parsed.name == template.title
    assert parsed.description
    assert parsed.streaming is template.streaming
    for param in parsed.parameters:
        assert param.label and param.help_text, param.name
        if param.name == "saslPassword":
            assert param.is_optional and "env:" in param.help_text and "file:" in param.help_text


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_metadata_matches_the_pipeline_options_both_ways(template):
    module = importlib.import_module(template.module)
    options = {o.name: o for o in module.OPTIONS}
    params = {p["name"]: p for p in _committed(template)["parameters"]}
    assert list(params) == list(options)
    for name, option in options.items():
        assert params[name]["isOptional"] is (not option.required), name
    # ... and the flags the pipeline really parses are exactly those parameters.
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and tuple(getattr(value, "DECLARATIONS", ())) == module.OPTIONS
    ]
    assert classes, f"{template.module} has no options class built from OPTIONS"
    parser_flags = _argparse_flags(classes[0])
    assert parser_flags == set(params)


def _argparse_flags(options_cls) -> set[str]:
    parser = argparse.ArgumentParser()
    options_cls._add_argparse_args(parser)
    return {action.dest for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_regexes_accept_documented_examples_and_defaults(template):
    options = {o.name: o for o in template.options()}
    for param in _committed(template)["parameters"]:
        option = options[param["name"]]
        for value in (option.example, param.get("defaultValue")):
            if value is None:
                continue
            for pattern in param.get("regexes", ()):
                assert re.fullmatch(pattern, value), f"{param['name']}: {value!r} !~ {pattern!r}"
                assert "(?P" not in pattern, "Dataflow checks regexes with Java: no (?P...)"
            option.check(option.type(value) if option.type in (int, float) else value)


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_dockerfile_follows_flex_template_launcher_conventions(template):
    text = (template.directory / "Dockerfile").read_text()
    assert f"ARG LAUNCHER_BASE={template_image.LAUNCHER_BASE_IMAGE}\n" in text
    assert "FROM ${LAUNCHER_BASE}\n" in text
    assert 'ENV FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/main.py"' in text
    assert 'ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE="${WORKDIR}/setup.py"' in text
    assert "RUN pip install --no-cache-dir -r requirements.txt" in text
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.M):
        assert (REPO_ROOT / source).exists(), source
        assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"
    main_py = (template.directory / "main.py").read_text()
    assert f"from {template.module} import run" in main_py
    assert callable(importlib.import_module(template.module).run)


def test_requirements_lock_every_runtime_dependency_of_setup_py():
    assert template_image.lock_problems() == [], (
        "run: python -m pipelines.template_metadata --write"
    )
    pins = template_image.REQUIREMENTS_PATH.read_text()
    assert "\ntensorflow==" in pins and "\nprotobuf==" in pins  # transitive ones are locked too


def test_lock_problems_name_a_missing_or_unfit_pin():
    text = template_image.REQUIREMENTS_PATH.read_text()
    broken = re.sub(r"(?m)^confluent-kafka==.*$", "confluent-kafka==1.0.0", text)
    broken = re.sub(r"(?m)^protobuf==.*\n", "", broken)
    problems = template_image.lock_problems(broken)
    assert any(p.startswith("setup.py RUNTIME needs confluent-kafka==") for p in problems)
    assert any("needs protobuf" in p and p.endswith("locked: missing") for p in problems)


def test_cloudbuild_builds_pushes_and_registers_every_template():
    config = yaml.safe_load((REPO_ROOT / "cloudbuild.yaml").read_text())
    assert {"_PROJECT", "_REGION", "_REPOSITORY", "_BUCKET"} <= set(config["substitutions"])
    assert config["options"]["dynamicSubstitutions"] is True
    steps = config["steps"] or []
    for template in TEMPLATES:
        image = f"${{_REGION}}-docker.pkg.dev/${{_PROJECT}}/${{_REPOSITORY}}/{template.image_name}"
        builds = [s["args"] for s in steps if s["args"][0] == "build"]
        dockerfile = f"templates/{template.name}/Dockerfile"
        build = next(a for a in builds if dockerfile in a)
        assert (REPO_ROOT / dockerfile).is_file()
        tag = build[build.index("-t") + 1]
        assert tag.startswith(image + ":")
        assert ["push", tag] in [s["args"] for s in steps]
        flex = next(
            s["args"]
            for s in steps
            if s["args"][:3] == ["dataflow", "flex-template", "build"]
            and s["args"][3] == f"gs://${{_BUCKET}}/templates/{template.name}.json"
        )
        assert f"--image={tag}" in flex and "--sdk-language=PYTHON" in flex
        metadata_flag = f"--metadata-file=templates/{template.name}/metadata.json"
        assert metadata_flag in flex
        assert template.metadata_path.is_file()
    push_index = {tuple(s["args"]): i for i, s in enumerate(steps)}
    for i, step in enumerate(steps):  # every template spec is written after its image is pushed
        if step["args"][:2] == ["dataflow", "flex-template"]:
            image = next(a.split("=", 1)[1] for a in step["args"] if a.startswith("--image="))
            assert push_index[("push", image)] < i


@pytest.mark.parametrize("streaming", [False, True])
def test_generated_main_py_calls_run_and_streaming_templates_stream(
    streaming, monkeypatch, tmp_path
):
    calls = []
    module = types.ModuleType("fake_main_pipeline")
    module.run = lambda argv=None: calls.append(argv)
    monkeypatch.setitem(sys.modules, "fake_main_pipeline", module)
    template = Template("fake", "fake_main_pipeline", "Fake", "Fake.", streaming)
    path = tmp_path / "main.py"
    path.write_text(template_image.main_py(template))
    monkeypatch.setattr(sys, "argv", [str(path), "--inputTopic=t"])
    runpy.run_path(str(path), run_name="__main__")
    assert calls == ([["--inputTopic=t", "--streaming"]] if streaming else [None])
