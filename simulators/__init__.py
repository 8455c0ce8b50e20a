"""Synthetic sensor and price streams, fault injection, and replay of recorded files.

Modules (imported on demand, so ``streamseq`` commands that do not simulate stay light):

* :mod:`simulators.sensors` - :class:`~simulators.sensors.SensorSimulator`
* :mod:`simulators.prices` - :class:`~simulators.prices.PriceSimulator`
* :mod:`simulators.faults` - :class:`~simulators.faults.FaultInjector`
* :mod:`simulators.replay` - :func:`~simulators.replay.replay_messages`
* :mod:`simulators.truth` - :class:`~simulators.truth.TruthWriter` (``--truth`` files)
* :mod:`simulators.output` - :func:`~simulators.output.produce`,
  :func:`~simulators.output.dry_run`, pacing
* :mod:`simulators.commands` - ``streamseq simulate sensors|prices`` and ``streamseq replay``

Every generator yields ``(key, payload, ts_ms)`` messages, which ``produce`` sends to Kafka.
"""
