"""What every checkpoint reader shares: io.py reads and writes files safely (and our converted layout),
rename.py applies a rename table, adapt.py resizes what a rename cannot. Each official layout's reader, with
its rename table, lives in its model's folder (npu_models/models/<family>/checkpoint.py); the command-line
tools that use them live in weights_tools/."""
