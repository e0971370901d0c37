"""Action plugin: the host's gateway certificate from the controller's private CA (llm_toolkit.tls).

Runs on the controller only (nothing is sent to the host): makes the CA under `ca_dir` when it is
missing, and returns the host's certificate, its private key and the CA's certificate, issuing the
certificate when there is none that is valid, names these addresses and is signed by the CA. The task
must use no_log (the result holds a private key).

Options:
  ca_dir:     the CA's directory on the controller (required)
  names:      DNS names the certificate holds
  addresses:  IP addresses the certificate holds
  renew_within_days: issue anew when the certificate expires within this many days (default 30)
"""

from __future__ import annotations

from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from llm_toolkit.tls import RENEW_WITHIN_DAYS, TlsError, ensure_host_certificate


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("ca_dir", "names", "addresses", "renew_within_days"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if not args.get("ca_dir"):
            raise AnsibleActionFail("llm_gateway_certificate: ca_dir is required")
        host = (task_vars or {}).get("inventory_hostname", "host")
        try:
            issued = ensure_host_certificate(
                Path(str(args["ca_dir"])).expanduser(),
                host,
                [str(name) for name in args.get("names") or []],
                [str(address) for address in args.get("addresses") or []],
                int(args.get("renew_within_days", RENEW_WITHIN_DAYS)),
                check_mode=self._task.check_mode,
            )
        except (TlsError, OSError) as error:
            raise AnsibleActionFail(f"{host}: {error}; fix: check llm_gateway_tls_ca_dir on the controller") from None
        result.update(issued)
        return result
