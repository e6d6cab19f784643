"""The `foedus` command line: one module per command group."""
