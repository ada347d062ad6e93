"""The SQLite ledger: the truth of what was sent, created, patched, revoked and failed.

Holds the schema and the records it hands back (`_schema`), the migrations of older
ledgers (`_migrations`), the byte packing of keys, ids and hashes (`_codec`), the row
transitions (`_transitions`), the reads for runs, verify, undo and evidence (`_reads`),
the `Ledger` itself and its read-only form (`_ledger`), the async group-commit writer
(`_writer`), the one-run-per-ledger lock (`_lock`) and the restored-copy check
(`_lineage`). The only SQL of the package is here. It may import the leaf modules
(`importer._errors`, `_resources`, `_keys`, `_rows`) and nothing else of the package.
"""
