"""Call states on local disk (RocksDB through rocksdict), so that the memory of a process that
remembers millions of calls stays bounded.

An adapter around the pure core: `codec` packs a `CallState` into bytes, `rocks` keeps the
settled states and the deadline index in one RocksDB (`RocksStates`, `RocksDeadlines`) and
the replay's record of each call's newest CDR (`RocksFinal`).
"""
