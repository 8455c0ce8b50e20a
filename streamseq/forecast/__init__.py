"""Forecasting beside the recurrent model: cheap per-key experts, their mixture, prediction
intervals and anomaly flags (see :mod:`streamseq.forecast.aggregate`)."""

from streamseq.forecast.aggregate import (
    EXPERTS,
    FORECASTERS,
    Aggregated,
    ExpertAggregator,
    add_totals,
    from_path,
    summarize_totals,
    to_path,
)

__all__ = ["EXPERTS", "FORECASTERS", "Aggregated", "ExpertAggregator", "add_totals",
           "from_path", "summarize_totals", "to_path"]
