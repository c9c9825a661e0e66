"""The local template launcher: gcloud-style --parameters, validation against metadata, the CLI.

A small fake pipeline module (``OPTIONS`` + ``run`` that records its argv) stands in for a real
pipeline so these tests check the launcher's own logic quickly; the integration test runs the
real Kafka-to-BigQuery template end to end.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from pipelines.common.options import KAFKA_SOURCE, Option, OptionError
from pipelines.flex_template import launcher, registry
from pipelines.flex_template.launcher import (
    EXIT_BAD_PARAMETERS,
    ParameterError,
    check_parameters,
    main,
    parse_parameters,
    pipeline_argv,
    prepare,
)
from pipelines.flex_template.metadata import template_metadata as build_metadata
from pipelines.flex_template.registry import Template

_FAKE_MODULE = "fake_template_pipeline"
_FAKE_OPTIONS = (
    *KAFKA_SOURCE,
    Option(
        "outputTableSpec",
        "Output table",
        "BigQuery table as project:dataset.table.",
        required=True,
        regexes=(r"[^:]+:[^.]+\.[^.]+",),
        example="p:d.t",
        param_type="BIGQUERY_TABLE",
    ),
    Option("maxRecords", "Max records", "Stop after this many records.", type=int),
)


def _fake_template(streaming: bool = True) -> Template:
    return Template(
        name="fake",
        module=_FAKE_MODULE,
        title="Fake",
        description="A fake template for launcher tests.",
        streaming=streaming,
    )


@pytest.fixture
def fake_template(monkeypatch, tmp_path):
    """Registers template ``fake`` (metadata written under tmp_path); yields the run() calls."""
    calls: list[list[str]] = []

    def run(argv=None):
        if "--outputTableSpec=refuse:d.t" in argv:
            raise OptionError("--outputTableSpec refused by the pipeline")
        calls.append(list(argv))
        return "result"

    module = types.ModuleType(_FAKE_MODULE)
    module.OPTIONS = _FAKE_OPTIONS
    module.run = run
    monkeypatch.setitem(sys.modules, _FAKE_MODULE, module)
    template = _fake_template()
    monkeypatch.setattr(registry, "TEMPLATES_DIR", tmp_path)
    monkeypatch.setattr(registry, "TEMPLATES", (template,))
    monkeypatch.setattr(launcher, "TEMPLATES", (template,))
    template.directory.mkdir()
    template.metadata_path.write_text(json.dumps(build_metadata(template)))
    return calls


def _metadata() -> dict:
    return build_metadata(_fake_template(), _FAKE_OPTIONS)


GOOD = {
    "bootstrapServers": "127.0.0.1:9092",
    "inputTopic": "transactions",
    "outputTableSpec": "p:d.t",
}


# --- parse_parameters: gcloud ArgDict syntax -------------------------------------------------


def test_parse_parameters_merges_repeated_flags_and_later_wins():
    assert parse_parameters(["a=1,b=2", "b=3", "c="]) == {"a": "1", "b": "3", "c": ""}


def test_parse_parameters_keeps_equals_signs_in_values():
    assert parse_parameters(["kafkaConfig=a.b=1;c=2"]) == {"kafkaConfig": "a.b=1;c=2"}


def test_parse_parameters_custom_delimiter_allows_commas_in_values():
    parsed = parse_parameters(["^;^bootstrapServers=a:9092,b:9092;inputTopic=t"])
    assert parsed == {"bootstrapServers": "a:9092,b:9092", "inputTopic": "t"}


@pytest.mark.parametrize("bad", ["novalue", "=x", "a=1,oops"])
def test_parse_parameters_rejects_items_without_name_or_equals(bad):
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_parameters([bad])


# --- check_parameters: Dataflow's checks ---------------------------------------------------


def test_check_parameters_accepts_a_good_set():
    check_parameters("fake", _metadata(), GOOD)
    check_parameters("fake", _metadata(), {**GOOD, "securityProtocol": "SSL", "maxRecords": "10"})


def test_check_parameters_lists_every_problem_with_help_text():
    params = {
        "inputTopic": "bad topic!",
        "securityProtocol": "TLS",
        "maxRecords": "ten",
        "outputTable": "p:d.t",
    }
    with pytest.raises(ParameterError) as info:
        check_parameters("fake", _metadata(), params)
    err = info.value
    assert len(err.problems) == 6, err.problems
    message = str(err)
    assert message.startswith("invalid parameters for template fake:")
    assert "bootstrapServers: required parameter is missing. Comma-separated host:port" in message
    assert "outputTableSpec: required parameter is missing. BigQuery table as" in message
    assert "inputTopic='bad topic!' does not match" in message
    assert "Kafka topic to read events from." in message
    assert (
        "securityProtocol='TLS' does not match 'PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL'" in message
    )
    assert "maxRecords='ten' does not match" in message
    assert "outputTable: unknown parameter; this template accepts: bootstrapServers," in message


def test_check_parameters_never_echoes_secret_values():
    metadata = _metadata()
    for param in metadata["parameters"]:
        if param["name"] == "saslPassword":
            param["regexes"] = ["(env|file):.+"]
    with pytest.raises(ParameterError) as info:
        check_parameters(
            "fake",
            metadata,
            {**GOOD, "saslPassword": "hunter2"},
            secrets=frozenset({"saslPassword"}),
        )
    assert "saslPassword=*** does not match" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_regexes_must_match_the_whole_value():
    with pytest.raises(ParameterError, match="outputTableSpec='p:d.t.x' does not match"):
        check_parameters("fake", _metadata(), {**GOOD, "outputTableSpec": "p:d.t.x"})


# --- argv and prepare ------------------------------------------------------------------------


def test_pipeline_argv_adds_the_local_runner_and_streaming():
    argv = pipeline_argv({"a": "1", "b": "x,y"}, streaming=True)
    assert argv == ["--a=1", "--b=x,y", "--runner=FnApiRunner", "--streaming"]


def test_pipeline_argv_keeps_a_runner_given_after_double_dash():
    argv = pipeline_argv({"a": "1"}, streaming=False, pipeline_args=["--runner=DirectRunner"])
    assert argv == ["--a=1", "--runner=DirectRunner"]


def test_prepare_follows_metadata_streaming_unless_overridden(fake_template):
    assert prepare("fake", GOOD).streaming is True
    batch = prepare("fake", GOOD, streaming=False)
    assert batch.streaming is False
    assert "--streaming" not in batch.argv
    assert batch.module == _FAKE_MODULE


def test_prepare_unknown_template_names_the_known_ones(fake_template):
    with pytest.raises(KeyError, match="unknown template 'nope' \\(known: fake\\)"):
        prepare("nope", GOOD)


# --- CLI ------------------------------------------------------------------------------------


def test_cli_runs_the_pipeline_with_the_parameters(fake_template):
    status = main(
        [
            "run",
            "fake",
            "--parameters",
            "^;^bootstrapServers=a:9092,b:9092;inputTopic=t",
            "--parameters",
            "outputTableSpec=p:d.t,maxRecords=5",
            "--no-streaming",
            "--",
            "--direct_num_workers=2",
        ]
    )
    assert status == 0
    assert fake_template == [
        [
            "--bootstrapServers=a:9092,b:9092",
            "--inputTopic=t",
            "--outputTableSpec=p:d.t",
            "--maxRecords=5",
            "--runner=FnApiRunner",
            "--direct_num_workers=2",
        ]
    ]


def test_cli_bad_parameters_exit_2_with_one_message_and_nothing_runs(fake_template, capsys):
    status = main(["run", "fake", "--parameters", "inputTopic=t,colour=red"])
    assert status == EXIT_BAD_PARAMETERS
    assert fake_template == []
    err = capsys.readouterr().err
    assert err.count("error: invalid parameters for template fake:") == 1
    assert "bootstrapServers: required parameter is missing." in err
    assert "outputTableSpec: required parameter is missing." in err
    assert "colour: unknown parameter" in err


def test_cli_malformed_parameters_and_unknown_template_exit_2(fake_template, capsys):
    assert main(["run", "fake", "--parameters", "inputTopic"]) == EXIT_BAD_PARAMETERS
    assert "bad parameter 'inputTopic': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["run", "nope"]) == EXIT_BAD_PARAMETERS
    assert "unknown template 'nope'" in capsys.readouterr().err


def test_cli_pipeline_option_errors_exit_2(fake_template, capsys):
    params = "bootstrapServers=a:1,inputTopic=t,outputTableSpec=refuse:d.t"
    assert main(["run", "fake", "--parameters", params]) == EXIT_BAD_PARAMETERS
    assert "--outputTableSpec refused by the pipeline" in capsys.readouterr().err


def test_cli_list_shows_templates(fake_template, capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out == "fake\tstreaming\tFake\n"


# --- the real templates ---------------------------------------------------------------------


def test_real_template_refuses_a_bad_parameter_set_listing_each_problem(capsys):
    status = main(
        [
            "run",
            "kafka_to_bigquery",
            "--parameters",
            "inputTopic=bad topic,securityProtocol=TLS,insertBatchSize=many",
            "--parameters",
            "saslPassword=hunter2,outputTableSpec=not-a-table,colour=red",
        ]
    )
    assert status == EXIT_BAD_PARAMETERS
    err = capsys.readouterr().err
    assert err.count("error: invalid parameters for template kafka_to_bigquery:") == 1
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert [line.split(":")[0].split("=")[0] for line in lines] == [
        "bootstrapServers",
        "schemaPath",
        "inputTopic",
        "securityProtocol",
        "insertBatchSize",
        "outputTableSpec",
        "colour",
    ]
    assert "bootstrapServers: required parameter is missing. Comma-separated host:port" in err
    assert "schemaPath: required parameter is missing. BigQuery JSON schema or Avro" in err
    assert "securityProtocol='TLS' does not match 'PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL'" in err
    assert "outputTableSpec='not-a-table' does not match" in err
    assert "BigQuery table for the rows, [project:]dataset.table" in err
    assert "hunter2" not in err


def test_real_streaming_template_runs_streaming_unless_told_otherwise():
    params = {
        "bootstrapServers": "127.0.0.1:9092",
        "inputTopic": "events",
        "outputTopic": "predictions",
        "modelPath": "/tmp/models/fraud",
        "schemaPath": "transforms/decoding/schemas/creditcard.json",
    }
    assert "--streaming" in prepare("score_events", params).argv
    assert "--streaming" not in prepare("score_events", params, streaming=False).argv
    export = {**params, "outputTableSpec": "my-project:fraud.transactions"}
    del export["outputTopic"], export["modelPath"]
    assert "--streaming" not in prepare("kafka_to_bigquery", export).argv
    assert "--streaming" in prepare("kafka_to_bigquery", export, streaming=True).argv
