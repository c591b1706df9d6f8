"""Anomaly detection and root-cause analysis over the sample stream (pure cores).

Scoring (:mod:`anomaly.scorer`) turns sample frames into per-minute digests
(:mod:`anomaly.digest`); ranking (:mod:`anomaly.rca`) turns digests, an alert
and the topology (:mod:`anomaly.topology`) into ranked, evidenced causes.
"""
