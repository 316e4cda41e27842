//! The per-VM control API (served by the VMM on `--api-socket`).
