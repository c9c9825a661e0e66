"""GcpEndpoints: resolution order, emulator detection, picklable Beam client, process config."""

from __future__ import annotations

import json
import pickle

import google.auth
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.auth.credentials import AnonymousCredentials

from pipelines.common.options import GCP_ENDPOINTS, OptionError, options_class, validate
from transforms.sinks.gcp_endpoints import EMULATOR_RETRY_DEADLINE_S, GcpEndpoints

EMULATOR_ENV = {
    "GOOGLE_CLOUD_PROJECT": "env-project",
    "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050",
    "STORAGE_EMULATOR_HOST": "127.0.0.1:9023",
}
EndpointOptions = options_class("EndpointOptions", GCP_ENDPOINTS)


def _options(*argv: str) -> PipelineOptions:
    return EndpointOptions(list(argv))


def test_env_vars_are_the_fallback():
    endpoints = GcpEndpoints.from_options(_options(), EMULATOR_ENV)
    assert endpoints == GcpEndpoints(
        project="env-project",
        bigquery_endpoint="http://127.0.0.1:9050",
        storage_endpoint="http://127.0.0.1:9023",
    )
    assert endpoints.bigquery_emulated and endpoints.storage_emulated


def test_options_win_over_env():
    options = _options(
        "--project=opt-project",
        "--bigqueryEndpoint=http://bq.local:1234/",
        "--storageEndpoint=http://gcs.local:5678",
    )
    assert GcpEndpoints.from_options(options, EMULATOR_ENV) == GcpEndpoints(
        "opt-project", "http://bq.local:1234", "http://gcs.local:5678"
    )


def test_validated_values_dict_is_accepted():
    values = validate(_options("--bigqueryEndpoint=http://h:1"), GCP_ENDPOINTS)
    endpoints = GcpEndpoints.from_options({**values, "project": "p"}, {})
    assert endpoints == GcpEndpoints("p", "http://h:1", None)


def test_nothing_set_means_google_cloud():
    endpoints = GcpEndpoints.from_options(None, {})
    assert endpoints == GcpEndpoints(None, None, None)
    assert not endpoints.bigquery_emulated and not endpoints.storage_emulated
    assert endpoints.beam_bigquery_client() is None


def test_https_endpoint_is_not_an_emulator():
    endpoints = GcpEndpoints("p", bigquery_endpoint="https://bigquery.example.com")
    assert not endpoints.bigquery_emulated
    assert GcpEndpoints("p", bigquery_endpoint="HTTP://127.0.0.1:9050").bigquery_emulated
    assert endpoints.bigquery_retry.deadline > EMULATOR_RETRY_DEADLINE_S


@pytest.mark.parametrize("bad", ["ftp://h:1", "http://", "://x"])
def test_bad_endpoint_is_refused(bad):
    with pytest.raises(ValueError, match="not an http"):
        GcpEndpoints("p", bigquery_endpoint=bad)


def test_option_regexes_refuse_a_non_emulator_storage_endpoint():
    with pytest.raises(OptionError, match="--storageEndpoint"):
        validate(_options("--storageEndpoint=https://storage.googleapis.com"), GCP_ENDPOINTS)
    with pytest.raises(OptionError, match="--bigqueryEndpoint"):
        validate(_options("--bigqueryEndpoint=127.0.0.1:9050"), GCP_ENDPOINTS)


def test_emulator_clients_are_anonymous_with_a_short_retry():
    endpoints = GcpEndpoints.from_options(None, EMULATOR_ENV)
    bigquery = endpoints.bigquery_client()
    assert isinstance(bigquery._credentials, AnonymousCredentials)
    assert bigquery._connection.API_BASE_URL == "http://127.0.0.1:9050"
    assert bigquery.project == "env-project"
    storage = endpoints.storage_client()
    assert isinstance(storage._credentials, AnonymousCredentials)
    assert endpoints.bigquery_retry.deadline == EMULATOR_RETRY_DEADLINE_S


def test_emulator_needs_a_project():
    with pytest.raises(ValueError, match="--project"):
        GcpEndpoints(bigquery_endpoint="http://127.0.0.1:9050").bigquery_client()


def test_beam_client_pickles_and_offers_both_apis():
    client = GcpEndpoints.from_options(None, EMULATOR_ENV).beam_bigquery_client()
    copy = pickle.loads(pickle.dumps(client))
    assert (
        repr(copy)
        == repr(client)
        == ("_BeamBigQueryClient('http://127.0.0.1:9050', project='env-project')")
    )
    for service in ("jobs", "tables", "datasets", "tabledata"):
        assert getattr(copy, service) is not None
    assert copy.tables._client.url == "http://127.0.0.1:9050/bigquery/v2/"
    assert callable(copy.insert_rows_json)


def test_configure_process_points_gs_at_the_emulator(monkeypatch):
    environ: dict[str, str] = {}
    GcpEndpoints("p", storage_endpoint="127.0.0.1:9023").configure_process(environ)
    assert environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9023"
    assert environ["GOOGLE_CLOUD_PROJECT"] == "p"
    assert environ["NO_GCE_CHECK"] == "True"
    path = environ["GOOGLE_APPLICATION_CREDENTIALS"]
    assert json.loads(open(path).read())["type"] == "external_account_authorized_user"
    # Loads offline and never needs a refresh, so Beam's credential lookup returns at once.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
    credentials, _ = google.auth.default()
    assert credentials.valid


def test_configure_process_keeps_existing_credentials_and_ignores_real_gcs():
    environ = {"GOOGLE_APPLICATION_CREDENTIALS": "/etc/mine.json"}
    GcpEndpoints("p", storage_endpoint="http://127.0.0.1:9023").configure_process(environ)
    assert environ["GOOGLE_APPLICATION_CREDENTIALS"] == "/etc/mine.json"
    untouched: dict[str, str] = {}
    GcpEndpoints("p").configure_process(untouched)
    assert untouched == {}
