#!/usr/bin/python
"""Test-only module: sets the Ansible facts a simulated host would report (tests/playbooks/render_units.yml).

The unit templates read facts that only a real host gathers (its CPUs, its groups); the unit tests
render them on the controller for hosts that do not exist, so they hand those facts in here.
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
