"""Monitoring of the served model: live accuracy on radiologists' labels, and drift of its predictions and inputs.

What the `monitor` function keeps in S3 (bucket `triage-state`, prefix `monitor/`, keys in shared.names):
`state.json`, the rolling summary of prediction events (`predictions`); `labels.json`, labels joined with their
predictions (`labels`); `report.json`, written on each PingSource tick (`report`, gauges in `metrics`). Drift is
judged against the model card's val split or the first window (`drift`), with PSI / KS (`statistics`). The two
state objects are replaced only by conditional writes, so concurrent events never lose one another's update.
`Monitor` (`dispatch`) is what the function calls.
"""

from shared.config import MonitorConfig
from shared.monitor.dispatch import Monitor
from shared.monitor.drift import card_reference
from shared.monitor.state import MonitorStateConflict
from shared.monitor.statistics import INTENSITY_BINS, histogram

__all__ = ["INTENSITY_BINS", "Monitor", "MonitorConfig", "MonitorStateConflict", "card_reference", "histogram"]
