"""Official checkpoints -> our layout: one module per official layout, each a rename table (rename.py)
plus the few steps that are not renames; io.py reads and writes files. The command-line tools that use
them live in weights_tools/."""
