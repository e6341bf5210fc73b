"""A self-contained HTML report of a model's loss landscape, and the ``landscape demo`` that produces one."""

from landscape.report.analyses import Analyses, OptimizerSetting, adam_second_moment, analyse, write_report
from landscape.report.demo import run_demo
from landscape.report.html import ReportData, build_report
from landscape.report.provenance import Provenance, collect_provenance, library_versions, model_hash

__all__ = [
    "Analyses",
    "OptimizerSetting",
    "Provenance",
    "ReportData",
    "adam_second_moment",
    "analyse",
    "build_report",
    "collect_provenance",
    "library_versions",
    "model_hash",
    "run_demo",
    "write_report",
]
