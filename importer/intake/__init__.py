"""Reading and mapping: legacy files in, validated consent bodies or row errors out.

Holds the readers (CSV in `_reader`, with its `_encoding`, `_layout` and `_formulas`;
Excel in `_excel`; FHIR in `_fhir` and `_fhir_body`), the mapping (version 1 in
`_mapping`, version 2's body paths and specs in `_mapping_v2`), the body models
(`_models`), and the normalizer that turns chunks of cells into rows (`_normalize`, with
`_v1rows`, `_v2rows`, `_dates`, `_cells`, `_key_index`, the column-wise proofs of
`_fastcheck` and the short-row check of `_cutcheck`). It may import the leaf modules
(`importer._rows`, `_errors`, `_keys`, `_options`, `_results`, `_resources`) and nothing
else of the package: not the ledger, the API client, the engine or the reports.
"""
