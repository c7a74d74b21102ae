"""From scores to events (:mod:`aiops.detect.events`) and time to threshold (:mod:`aiops.detect.capacity`)."""

from aiops.detect.capacity import CapacityResult, time_to_threshold
from aiops.detect.events import scores_to_events

__all__ = ["CapacityResult", "scores_to_events", "time_to_threshold"]
