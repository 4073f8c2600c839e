"""Shared by every Cryptex service: settings, market spec, message schemas, Redis keys and
Lua scripts, JSON logging, metrics and the common service runtime. Pure modules (markets,
money, keys, errors, messages) do no I/O; adapters (ledger, registry, runtime) do."""
