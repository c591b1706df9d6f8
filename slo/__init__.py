"""gpuslo's SLO engine: pure functions and classes, no I/O, no clock.

Time enters only as an explicit ``now``; the Kafka stage runners, the CLI and
the exporters are thin shells around what is here.

* :mod:`slo.spec` - OpenSLO v1 in, :class:`~slo.spec.SloSpec` out
  (:func:`~slo.spec.load_specs`, :func:`~slo.spec.parse_yaml`); every problem
  listed at once in a :class:`~slo.spec.SpecError`.
* :mod:`slo.sli` - stage 1: :class:`~slo.sli.Stage1State`,
  ``apply(sample_frame, partition) -> partials`` (frame of
  :data:`~slo.sli.PARTIAL_SCHEMA`), ``snapshot(partition)``/``restore``.
* :mod:`slo.budget` - stage 2: :class:`~slo.budget.Stage2State`,
  ``apply(partials)``, ``report(now) -> list[SloReport]``, ``snapshot``/``restore``.
* :mod:`slo.alerting` - :class:`~slo.alerting.AlertEvaluator`,
  ``evaluate(reports, now) -> list[AlertReport]``.
* :mod:`slo.rules` - Prometheus rules and ``promtool test rules`` files.
* :mod:`slo.backtest` - :func:`~slo.backtest.backtest` over a recorded sample frame.
* :mod:`slo.windows` and :mod:`slo.conventions` - the burn-rate table as data
  and every generated name.
"""
