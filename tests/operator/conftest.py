"""The status timer's interval is fixed when the handlers module is imported: keep it short
for the tests (the operator reads CRYPTEX_STATUS_INTERVAL_S; production default 15 s)."""

import os

os.environ.setdefault("CRYPTEX_STATUS_INTERVAL_S", "0.3")
