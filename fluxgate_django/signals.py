"""Signals FluxGate sends. Connect receivers as for any Django signal.

``budget_threshold_crossed(sender=Budget, budget, alert, threshold_percent, spent, limit,
window_start)`` — once per budget window and threshold (the alert percent and 100%).

``spend_anomaly_detected(sender=Team, team, feature, anomaly, recent_usd, baseline_usd)``
— a team's or feature's spend rate ran far above its trailing average.
"""

from django.dispatch import Signal

budget_threshold_crossed = Signal()
spend_anomaly_detected = Signal()
