#!/usr/bin/python
"""Ansible module: NVIDIA GPU facts (thin adapter over module_utils/llm_gpu.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_gpu_facts
short_description: Gather NVIDIA GPU, driver and CUDA facts without ever failing on a broken GPU stack
description:
  - Runs C(nvidia-smi --query-gpu) (falling back when an old driver refuses a field such as
    C(compute_cap)), reads the highest CUDA version the driver supports from the default table,
    lists processes holding GPU memory, and reads the kernel's view (modules, Secure Boot, PCI).
  - Read-only; supports check mode. A missing or broken driver is reported in C(state), not as a failure.
options:
  nvidia_smi_path:
    description: Path to nvidia-smi; empty to search PATH (and /usr/bin).
    type: str
    default: ""
  nvcc_path:
    description: Path to nvcc; empty to search PATH and /usr/local/cuda/bin.
    type: str
    default: ""
  health:
    description:
      - Also read each GPU's health (C(nvidia-smi -q -x)), the Xid events of the kernel log since boot and,
        on an NVSwitch host, the fabric manager (module_utils/llm_gpu_health.py) into C(health).
    type: bool
    default: false
  kernel_log_command:
    description:
      - The command that prints the kernel log since boot, for the Xid events; empty for none (the check is
        then "not measured").
    type: list
    elements: str
    default: [journalctl, -k, -b, -o, short-iso, --no-pager]
  timeout:
    description:
      - Seconds each nvidia-smi (and nvcc) call may take; one that does not finish is killed and
        reported as C(state=timed-out) (a wedged GPU or driver), and no further call is made.
    type: int
    default: 60
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Gather GPU facts
  nvidia_gpu_facts:
  register: __llm_preflight_gpu
"""

RETURN = r"""
ansible_facts:
  description: C(nvidia_gpu) with state, error, driver_version, cuda_version, nvcc_version, gpus,
    compute_apps, kernel_modules, kernel_driver_version, secure_boot, pci_devices, fallbacks; and health
    (gpus, driver_version, xid_events, fabric_manager, not_measured) when asked for and the GPUs answer.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_gpu import NVIDIA_SMI_TIMEOUT_S, HostFiles, collect, run_bounded
from ansible.module_utils.llm_gpu_health import KERNEL_LOG_COMMAND, collect_health, nvswitch_devices


def main():
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi_path": {"type": "str", "default": ""},
            "nvcc_path": {"type": "str", "default": ""},
            "health": {"type": "bool", "default": False},
            "kernel_log_command": {"type": "list", "elements": "str", "default": KERNEL_LOG_COMMAND},
            "timeout": {"type": "int", "default": NVIDIA_SMI_TIMEOUT_S},
        },
        supports_check_mode=True,
    )
    nvidia_smi = module.params["nvidia_smi_path"] or module.get_bin_path("nvidia-smi", opt_dirs=["/usr/bin"])
    if module.params["nvidia_smi_path"] and not module.get_bin_path(nvidia_smi):
        nvidia_smi = None
    nvcc = module.params["nvcc_path"] or module.get_bin_path("nvcc", opt_dirs=["/usr/local/cuda/bin"])

    if module.params["timeout"] < 1:
        module.fail_json(msg=f"timeout {module.params['timeout']} is not positive; expected seconds, e.g. 60")
    environment = dict(os.environ, LC_ALL="C")

    # AnsibleModule.run_command has no time limit: a wedged driver would hang the play forever.
    def run(argv):
        return run_bounded(argv, module.params["timeout"], environment)

    facts = collect(run, HostFiles(), nvidia_smi, nvcc)
    if module.params["health"] and facts["state"] == "ok":
        nvswitch = bool(nvswitch_devices(HostFiles()))
        facts["health"] = collect_health(run, nvidia_smi, module.params["kernel_log_command"], nvswitch)
    module.exit_json(changed=False, ansible_facts={"nvidia_gpu": facts})


if __name__ == "__main__":
    main()
