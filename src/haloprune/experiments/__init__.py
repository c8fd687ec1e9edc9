"""Experiments: sweep configs (``config``) expanded into typed jobs (``jobs``, ``sweep``), run by the runner
(``runner``) on an executor (``executors``) into the SQLite results store (``store``), their files where
``paths`` says; the one selection rule and the tables (``report``, ``sweep_report``), plots (``plots``)
and per-layer analysis (``analysis``)."""
