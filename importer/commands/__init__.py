"""The library's commands beside `run`: validate, verify, undo, demo, init and preview.

Each module is one command as a library call (`validate_files`, `verify`, `undo`, the
demo, `init`'s starter mapping with its column guesses, `preview`), which the CLI and
`importer.__all__` expose. It may import the engine, the reports, the parts below them
and the sandbox (the demo runs one); never the CLI.
"""
