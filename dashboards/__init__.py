"""Grafana dashboards for gpuslo, generated in code with grafana-foundation-sdk.

``catalog.BUILDERS`` lists the set; ``export.write_dashboards`` writes it as JSON
or as ConfigMaps for kube-prometheus-stack's Grafana sidecar; ``json/`` holds the
committed output (package data), which the golden test keeps equal to the code.
"""
