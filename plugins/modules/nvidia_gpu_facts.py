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
    compute_apps, kernel_modules, kernel_driver_version, secure_boot, pci_devices, fallbacks.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_gpu import HostFiles, collect


def main():
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi_path": {"type": "str", "default": ""},
            "nvcc_path": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    nvidia_smi = module.params["nvidia_smi_path"] or module.get_bin_path("nvidia-smi", opt_dirs=["/usr/bin"])
    if module.params["nvidia_smi_path"] and not module.get_bin_path(nvidia_smi):
        nvidia_smi = None
    nvcc = module.params["nvcc_path"] or module.get_bin_path("nvcc", opt_dirs=["/usr/local/cuda/bin"])

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    facts = collect(run, HostFiles(), nvidia_smi, nvcc)
    module.exit_json(changed=False, ansible_facts={"nvidia_gpu": facts})


if __name__ == "__main__":
    main()
