"""The import engine and the whole `run`: decide, execute, record, observe.

Holds the engine's pump (`_engine`), a row's work (`_work`), the executor that sends it
(`_executor`), the recorder that writes what it learned through the ledger's transitions
(`_recorder`), the observer that keeps the run's stats (`_observer`), a row's decision
(`_decide`), the dry run (`_dry_run`), the input opened once (`_input`), `--settle`
(`_settle`), `--revoke-missing` (`_revocation`), the preflight and the create gate
(`_preflight`, `_gate`), the run's identity (`_identity`), row log lines (`_rowlog`) and
the run from settings to summary (`_runner`). It may import `api`, `ledger`, `intake`,
the outputs of `reports` and the leaf modules; never the CLI, the commands, or the
reports that print (`_report`, `_html_report`, `_console`).
"""
