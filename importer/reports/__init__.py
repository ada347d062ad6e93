"""What the commands show and write: reports, the console, outputs, exports and status.

Holds the terminal, JSON and CSV reports (`_report`), the HTML report (`_html_report`),
the progress bar and log format (`_console`), the checked, whole-file outputs
(`_outputs`), the exports of created and failed rows (`_export`, `_fhir_export`),
`status` (`_status`), the monitoring summary and metrics (`_monitoring`, `_metrics`), the
values profile (`_values`) and suspect duplicates (`_suspects`). It may import `api`,
`ledger`, `intake` and the leaf modules; never the engine, the commands or the CLI.
"""
