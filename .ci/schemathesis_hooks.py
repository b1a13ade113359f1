"""schemathesis hooks for Tessera's CI run.

- Credentials: every connection holds the admin's client certificate. schemathesis fills the
  `root_key` bearer scheme with made-up tokens, which only ever get the uniform 401 (covered by
  tests/it/auth.rs) and would hide the handlers behind it; so a quarter of the requests that
  carry one send a real root key of the default tenant instead (made by .ci/schemathesis), and
  the rest drop it and act as the admin.
- The admin's own certificate is what the run authenticates with: a revocation that names its
  serial is pointed at a serial that does not exist.
"""

import os
import random

import schemathesis

PROTECTED = os.environ["ST_PROTECTED_SERIAL"]
ROOT_KEY = os.environ["ST_ROOT_KEY"]
CHOICE = random.Random(20261128)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if headers:
        for name in [h for h in headers if h.lower() == "authorization"]:
            del headers[name]
            if CHOICE.random() < 0.25:
                headers["Authorization"] = f"Bearer {ROOT_KEY}"
    if case.operation.label == "POST /v1/certs/{serial}/revoke":
        params = case.path_parameters or {}
        if str(params.get("serial", "")).lower().lstrip("0") == PROTECTED:
            params["serial"] = "7e57"
            case.path_parameters = params
