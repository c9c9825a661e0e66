"""Where BigQuery and Cloud Storage live: Google Cloud, or the local emulators, as configuration.

A pipeline runs unchanged against Google Cloud and the local stack; only these endpoints differ.
They come from the pipeline options first (Beam's ``--project``, ``--bigqueryEndpoint``,
``--storageEndpoint``, see ``pipelines.common.options.GCP_ENDPOINTS``), then from the standard env
vars
``GOOGLE_CLOUD_PROJECT``, ``BIGQUERY_EMULATOR_HOST`` and ``STORAGE_EMULATOR_HOST``.

An ``http://`` endpoint is an emulator (Google APIs are never served over plain HTTP): clients get
anonymous credentials and a short retry deadline, so an emulator error fails fast instead of
retrying for ten minutes. ``https://`` endpoints and the defaults use Application Default
Credentials.

Beam has no endpoint option for its BigQuery sink, and with only ``BIGQUERY_EMULATOR_HOST`` set it
starts an interactive OAuth flow. :meth:`GcpEndpoints.beam_bigquery_client` therefore returns a
picklable client for ``WriteToBigQuery(test_client=...)`` / ``ReadFromBigQuery``'s wrapper, built
on Beam's own ``BigqueryV2`` apitools client, or ``None`` for real BigQuery (Beam's default path).

Beam's ``gs://`` filesystem builds its storage client from ``STORAGE_EMULATOR_HOST`` and
Application Default Credentials, and without credentials it retries ~17.5 s before going
anonymous. :meth:`GcpEndpoints.configure_process` sets ``STORAGE_EMULATOR_HOST`` and, when no
credentials are configured, points ``GOOGLE_APPLICATION_CREDENTIALS`` at a static-token credential
file that the emulator ignores; no Beam internals are patched.

Usage::

    endpoints = GcpEndpoints.from_options(pipeline_options)
    endpoints.configure_process()          # before the pipeline touches gs://
    rows | WriteToBigQuery(table, test_client=endpoints.beam_bigquery_client(), ...)
    endpoints.bigquery_client().query("SELECT 1", retry=endpoints.bigquery_retry)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

__all__ = ["GcpEndpoints", "EMULATOR_RETRY_DEADLINE_S"]

_LOGGER = logging.getLogger(__name__)

#: Seconds a client call to an emulator may spend retrying before it fails.
EMULATOR_RETRY_DEADLINE_S = 30.0

_PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
_BIGQUERY_ENV = "BIGQUERY_EMULATOR_HOST"
_STORAGE_ENV = "STORAGE_EMULATOR_HOST"
_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
# A credential that google.auth.default() loads offline and never refreshes (no expiry); the
# emulators ignore the bearer token it adds.
_EMULATOR_CREDENTIALS = {"type": "external_account_authorized_user", "token": "local-emulator"}


def _normalize(endpoint: str | None) -> str | None:
    """``host:port`` (the emulator env var convention) → ``http://host:port``; no trailing /."""
    if not endpoint:
        return None
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
    return text.rstrip("/")


def _is_emulator(endpoint: str | None) -> bool:
    return endpoint is not None and urlsplit(endpoint).scheme == "http"


@dataclasses.dataclass(frozen=True)
class GcpEndpoints:
    """Project plus BigQuery and GCS endpoints; ``None`` endpoints mean Google Cloud itself."""

    project: str | None = None
    bigquery_endpoint: str | None = None
    storage_endpoint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bigquery_endpoint", _normalize(self.bigquery_endpoint))
        object.__setattr__(self, "storage_endpoint", _normalize(self.storage_endpoint))

    @classmethod
    def from_options(
        cls,
        options: PipelineOptions | Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> GcpEndpoints:
        """Resolve from options (a ``PipelineOptions`` or the dict ``validate`` returns), then env.

        Args:
          options: pipeline options; ``project`` is Beam's ``--project``.
          environ: the environment to fall back on (default ``os.environ``).
        Returns:
          The resolved endpoints.
        """
        env = os.environ if environ is None else environ
        values: Mapping[str, Any]
        if isinstance(options, PipelineOptions):
            values = options.get_all_options(retain_unknown_options=True)
            values = {**values, "project": options.view_as(GoogleCloudOptions).project}
        else:
            values = options or {}
        return cls(
            project=values.get("project") or env.get(_PROJECT_ENV) or None,
            bigquery_endpoint=values.get("bigqueryEndpoint") or env.get(_BIGQUERY_ENV),
            storage_endpoint=values.get("storageEndpoint") or env.get(_STORAGE_ENV),
        )

    @property
    def bigquery_emulated(self) -> bool:
        return _is_emulator(self.bigquery_endpoint)

    @property
    def storage_emulated(self) -> bool:
        return _is_emulator(self.storage_endpoint)

    @property
    def bigquery_retry(self):  # -> google.api_core.retry.Retry
        """Retry policy for google-cloud-bigquery calls: short against an emulator."""
        from google.cloud.bigquery import DEFAULT_RETRY

        return (
            DEFAULT_RETRY.with_deadline(EMULATOR_RETRY_DEADLINE_S)
            if self.bigquery_emulated
            else DEFAULT_RETRY
        )

    def _require_project(self) -> str:
        if not self.project:
            raise ValueError(f"no GCP project: pass --project or set {_PROJECT_ENV}")
        return self.project

    def bigquery_client(self):  # -> google.cloud.bigquery.Client
        """A google-cloud-bigquery client; anonymous only when the endpoint is an emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        if self.bigquery_endpoint is None:
            return bigquery.Client(project=self.project)
        return bigquery.Client(
            project=self._require_project(),
            client_options={"api_endpoint": self.bigquery_endpoint},
            credentials=AnonymousCredentials() if self.bigquery_emulated else None,
        )

    def storage_client(self):  # -> google.cloud.storage.Client
        """A google-cloud-storage client; anonymous only when the endpoint is an emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        if self.storage_endpoint is None:
            return storage.Client(project=self.project)
        return storage.Client(
            project=self.project,
            client_options={"api_endpoint": self.storage_endpoint},
            credentials=AnonymousCredentials() if self.storage_emulated else None,
        )

    def beam_bigquery_client(self) -> _BeamBigQueryClient | None:
        """Client for Beam's BigQuery IO ``test_client`` argument, or None for real BigQuery."""
        if self.bigquery_endpoint is None:
            return None
        return _BeamBigQueryClient(self.bigquery_endpoint, self._require_project())

    def configure_process(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Point Beam's ``gs://`` filesystem (here and in worker subprocesses) at the emulator.

        google-cloud-storage, which Beam's filesystem uses, takes its endpoint only from
        ``STORAGE_EMULATOR_HOST``. Without credentials Beam's lookup retries ~17.5 s, so a
        static-token credential file is configured unless ``GOOGLE_APPLICATION_CREDENTIALS`` is
        already set. Does nothing for Google Cloud Storage itself.
        """
        env = os.environ if environ is None else environ
        if not self.storage_emulated:
            return
        env[_STORAGE_ENV] = self.storage_endpoint
        if self.project:
            env.setdefault(_PROJECT_ENV, self.project)
        env.setdefault("NO_GCE_CHECK", "True")
        if not env.get(_CREDENTIALS_ENV):
            env[_CREDENTIALS_ENV] = str(_emulator_credentials_file())
            _LOGGER.info("GCS emulator at %s: using static emulator credentials", env[_STORAGE_ENV])


def _emulator_credentials_file() -> Path:
    """Write (once, atomically) the static emulator credential file and return its path."""
    directory = Path(tempfile.gettempdir()) / f"kafka-beam-ml-{os.getuid()}"
    path = directory / "emulator-credentials.json"
    if not path.is_file():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=directory, suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(_EMULATOR_CREDENTIALS, out)
        os.replace(tmp, path)
    return path


class _BeamBigQueryClient:
    """Beam's apitools ``BigqueryV2`` at an endpoint, plus ``insert_rows_json`` for streaming.

    Beam's ``BigQueryWrapper(client=...)`` uses the client for both its apitools calls
    (``jobs``, ``tables``, ``datasets``, ``tabledata``) and google-cloud-bigquery's
    ``insert_rows_json``, so this object offers both. It pickles as its endpoint and project and
    rebuilds the clients on the worker.
    """

    def __init__(self, endpoint: str, project: str) -> None:
        from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2

        self._endpoint = endpoint
        self._project = project
        endpoints = GcpEndpoints(project=project, bigquery_endpoint=endpoint)
        credentials = None
        if not endpoints.bigquery_emulated:
            from apache_beam.internal.gcp.auth import get_service_credentials

            credentials = get_service_credentials(PipelineOptions())
        self._apitools = BigqueryV2(
            url=endpoint + "/bigquery/v2/", get_credentials=False, credentials=credentials
        )
        self._retry = endpoints.bigquery_retry
        self._client = endpoints.bigquery_client()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._endpoint, self._project))

    def __repr__(self) -> str:
        return f"_BeamBigQueryClient({self._endpoint!r}, project={self._project!r})"

    @property
    def jobs(self):  # noqa: ANN201 - apitools service
        return self._apitools.jobs

    @property
    def tables(self):  # noqa: ANN201
        return self._apitools.tables

    @property
    def datasets(self):  # noqa: ANN201
        return self._apitools.datasets

    @property
    def tabledata(self):  # noqa: ANN201
        return self._apitools.tabledata

    def insert_rows_json(self, table: str, json_rows: list[dict[str, Any]], **kwargs: Any):
        """Forward to google-cloud-bigquery with the endpoint's retry policy."""
        kwargs.setdefault("retry", self._retry)
        return self._client.insert_rows_json(table, json_rows, **kwargs)
