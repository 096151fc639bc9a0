"""Secured vnets, security levels ``auth`` and ``conf`` (design.md 7, docs/security.md).

Pure modules: ``keys`` (key files and the HKDF schedule), ``replay`` (the
sliding window), ``secure_codec`` (header layout, seal and open),
``keystore`` (generations, epochs, per-sender state).  ``epoch_file`` is the
small I/O adapter that persists the last epoch for the daemon.
"""
