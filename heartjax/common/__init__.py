"""The leaves every layer may import; none imports another first-party module.

`errors` (the error type), `rng` (named random streams), `atomic` (every file write), `paths` (every file name of
a run folder), `provenance` (commit, code fingerprint, libraries and machine of a result) and `cli` (the flags
every command line shares).
"""
