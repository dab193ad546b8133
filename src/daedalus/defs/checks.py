"""Per-partition asset checks on a training asset; they run in the same job as the asset.

Each check calls `daedalus.audit` on the written day and reports what it found.
"""

import datetime as dt
import warnings

import dagster as dg

from daedalus.audit import embedding_coverage, impression_count, leakage_audit, written_day
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.resources import DaedalusConfig


def _day(context: dg.AssetCheckExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def training_checks(service: str, asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """Row count, leakage audit and embedding coverage for one day of `asset`."""
    # Partitioned checks are a Dagster preview; without them a check result is not
    # tied to the day it audited.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(asset=asset, name="row_count_matches_impressions", blocking=True,
                        partitions_def=daily_partitions,
                        description="Output rows equal the day's impressions: nothing dropped or"
                                    " duplicated.")
        def row_count(context: dg.AssetCheckExecutionContext,
                      cfg: DaedalusConfig) -> dg.AssetCheckResult:
            request = cfg.request(service, _day(context))
            config, registry, day = request.config, request.registry, request.days[0]
            written = written_day(request.final_root, day)
            expected = impression_count(config, registry, service, day)
            return dg.AssetCheckResult(
                passed=written.rows == expected,
                metadata={"output_rows": written.rows, "impressions": expected,
                          "output_path": str(written.path), "partition": context.partition_key})

        @dg.asset_check(asset=asset, name="no_future_feature_values", blocking=True,
                        partitions_def=daily_partitions,
                        description="Leakage audit: every feature value of every row is explained"
                                    " by a source row strictly before the impression (and within"
                                    " TTL/window); `audited` says if a sample was asked for.")
        def no_leakage(context: dg.AssetCheckExecutionContext,
                       cfg: DaedalusConfig) -> dg.AssetCheckResult:
            request = cfg.request(service, _day(context))
            config, registry, day = request.config, request.registry, request.days[0]
            report = leakage_audit(config, registry, service, day,
                                   request.final_root,
                                   max_rows=cfg.audit_max_rows)
            metadata: dict = {"output_rows": report.output_rows,
                              "audited_rows": report.audited_rows,
                              "audited": report.sample,
                              "sampled": report.audited_rows < report.output_rows,
                              "leaked_rows": report.leaked_rows,
                              "partition": context.partition_key}
            for f in report.findings:
                metadata[f"{f.group}: checked_rows"] = f.checked_rows
                metadata[f"{f.group}: leaked_rows"] = f.leaked_rows
                if f.examples:
                    metadata[f"{f.group}: examples"] = dg.MetadataValue.json(list(f.examples))
            metadata["rules"] = dg.MetadataValue.json({f.group: f.rule for f in report.findings})
            return dg.AssetCheckResult(passed=report.passed, metadata=metadata)

        @dg.asset_check(asset=asset, name="embedding_coverage", partitions_def=daily_partitions,
                        description="Share of rows with each embedding present (reported; fails"
                                    " only if a declared embedding column is missing).")
        def coverage(context: dg.AssetCheckExecutionContext,
                     cfg: DaedalusConfig) -> dg.AssetCheckResult:
            request = cfg.request(service, _day(context))
            config, registry, day = request.config, request.registry, request.days[0]
            columns = list(registry.service(service).enrichments)
            root = request.final_root
            ratios = embedding_coverage(config, root, day, columns)
            rows = written_day(root, day).rows
            missing = [c for c, r in ratios.items() if r is None and rows]
            metadata: dict = {f"{c}: coverage": r for c, r in ratios.items() if r is not None}
            metadata.update({"rows": rows, "missing_columns": missing,
                             "partition": context.partition_key})
            return dg.AssetCheckResult(passed=not missing, metadata=metadata,
                                       severity=dg.AssetCheckSeverity.WARN)

    return [row_count, no_leakage, coverage]
