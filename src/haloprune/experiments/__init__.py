"""Experiments: sweep configs expanded into jobs (``sweep``), run by the runner (``runner``) into the
SQLite results store (``store``); the one selection rule and the tables (``report``, ``sweep_report``),
plots (``plots``) and per-layer analysis (``analysis``)."""
