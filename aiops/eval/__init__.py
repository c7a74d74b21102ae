"""Evaluation: benchmark scorers shared by ``benchmarks/`` and notebooks.

:mod:`aiops.eval.nab` scores anomaly scores the way the Numenta Anomaly Benchmark does;
:mod:`aiops.eval.forecast` holds the rolling-origin forecast metrics (MASE, coverage).
"""
