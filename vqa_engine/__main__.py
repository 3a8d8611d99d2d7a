import sys

from vqa_engine.cli import main

sys.exit(main())
