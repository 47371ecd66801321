"""The deployment artifacts checked by their real tools (Helm SDK, kubernetes-validate,
actionlint, check-jsonschema, hadolint): ``make test-deploy`` installs them and runs these."""

from __future__ import annotations

import os

if not os.environ.get("RUN_DEPLOY_TESTS"):
    collect_ignore_glob = ["test_*.py"]
