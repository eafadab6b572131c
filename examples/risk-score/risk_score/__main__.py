import sys

from risk_score import main

sys.exit(main())
