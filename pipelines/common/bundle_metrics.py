"""Keep a long local stream's memory flat: consolidate each bundle's metrics as it ends.

Beam 2.77's FnApiRunner (the local runner of ``--streaming`` runs) folds every bundle's
monitoring infos into the previous ones with ``monitoring_infos.consolidate``, a *generator*,
and keeps the generator: after N bundles each stage holds N nested generators, every one of
them keeping its bundle's ``ProcessBundleResponse`` protos alive (native protobuf memory, which
``tracemalloc`` does not see). Nothing reads them before the pipeline ends, so a scorer taking
ten bundles a second grew ~10 MiB a minute, for as long as it ran.

:func:`install` makes the runner's consolidation eager (a list), so each stage keeps one
consolidated set of metrics, as a batch run ends up with anyway. The metrics are the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apache_beam.metrics import monitoring_infos
from apache_beam.runners.portability.fn_api_runner import fn_runner

__all__ = ["install"]


def _consolidate_now(metrics: Iterable[Any], key: Any = monitoring_infos.to_key) -> list[Any]:
    return list(monitoring_infos.consolidate(metrics, key))


def install() -> None:
    """Make the FnApiRunner consolidate bundle metrics eagerly (idempotent)."""
    fn_runner.consolidate_monitoring_infos = _consolidate_now
