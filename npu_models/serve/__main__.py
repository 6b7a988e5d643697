import sys

from npu_models.serve.cli import main

sys.exit(main())
