#!/usr/bin/python
"""Ansible module: download a Hugging Face model snapshot (thin adapter over module_utils/llm_hf.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: hf_snapshot
short_description: Download a pinned Hugging Face model snapshot into a directory, atomically
description:
  - Asks the Hub for the commit and files of O(repo) at O(revision), downloads the files a model directory
    needs into a staging directory beside O(dest), checks their sizes, and only then moves it into place;
    a failed download leaves the previous snapshot where it was.
  - Nothing is downloaded when O(dest) already holds that commit.
  - The token is the O(token) argument (declared C(no_log), so Ansible hides it; module arguments travel
    inside the module's payload, never on a command line or in the process's environment), else the
    environment variable C(HF_TOKEN) of the module's process.
  - HTTP 429 and 5xx answers and network errors are retried with backoff; 401, 403 and 404 fail at once with
    a message that tells them apart.
options:
  repo:
    description: Repository id, C(owner/name).
    type: str
    required: true
  revision:
    description: Commit (recommended), tag or branch.
    type: str
    required: true
  dest:
    description: Model directory to create or replace.
    type: path
    required: true
  endpoint:
    description: Hub URL (a mirror, or a test stand-in).
    type: str
    default: https://huggingface.co
  patterns:
    description: File name patterns to download.
    type: list
    elements: str
  retries:
    description: Further attempts after a retryable failure.
    type: int
    default: 5
  backoff:
    description: Seconds before the first retry, doubled each time (capped at 60).
    type: float
    default: 2
  timeout:
    description: Seconds without data before a request is given up.
    type: int
    default: 60
  owner:
    description: Owner of the files.
    type: str
  min_free_bytes:
    description: Free space to leave on the file system after the download.
    type: int
    default: 0
  token:
    description: Access token for gated or private repositories; empty, none.
    type: str
    default: ""
author: LLM toolkit team
"""

EXAMPLES = r"""
- name: Download the AWQ checkpoint
  hf_snapshot:
    repo: casperhansen/mixtral-instruct-awq
    revision: 0123456789abcdef0123456789abcdef01234567
    dest: /var/lib/vllm/models/casperhansen--mixtral-instruct-awq
    token: "{{ vault_hf_token }}"
  no_log: true
"""

RETURN = r"""
commit:
  description: The commit the snapshot holds.
  returned: success
  type: str
files:
  description: Files of the snapshot.
  returned: success
  type: list
bytes:
  description: Bytes downloaded.
  returned: always
  type: int
attempts:
  description: Requests retried, in all.
  returned: always
  type: int
"""

import json
import os
import pwd
import shutil
import time
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_hf import (
    HubError,
    backoff,
    check_request,
    classify,
    commit_of,
    files_to_fetch,
    total_bytes,
)
from ansible.module_utils.urls import open_url

MARKER = ".hf_snapshot.json"


class Hub:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.token = module.params["token"] or os.environ.get("HF_TOKEN", "")
        self.retries = 0

    def _headers(self):
        headers = {"User-Agent": "llm-toolkit-hf-snapshot/1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, url, sink=None):
        """GET url with retries; returns the body, or streams it into sink (a file)."""
        params = self.params
        for attempt in range(params["retries"] + 1):
            try:
                response = open_url(url, headers=self._headers(), timeout=params["timeout"], follow_redirects="all")
                with response:
                    if sink is None:
                        return response.read()
                    written = 0
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            return written
                        sink.write(block)
                        written += len(block)
            except HTTPError as exc:
                body = exc.read().decode("utf-8", "replace") if hasattr(exc, "read") else ""
                error = classify(exc.code, params["repo"], params["revision"], body, bool(self.token))
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except (URLError, OSError) as exc:
                error = HubError(f"{params['repo']}@{params['revision']}: network error: {exc}", retryable=True)
                retry_after = None
            if not error.retryable or attempt == params["retries"]:
                if error.retryable:
                    raise HubError(f"{error} after {attempt + 1} attempts; fix: retry later, or set vllm_hf_token")
                raise error
            self.retries += 1
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            time.sleep(backoff(attempt, params["backoff"], retry_after=retry_after))
        raise AssertionError("unreachable")


def _snapshot_info(module, hub):
    """(commit, files) of the revision, or fail with the Hub's answer told apart."""
    params = module.params
    revision = quote(params["revision"], safe="")
    url = f"{params['endpoint'].rstrip('/')}/api/models/{params['repo']}/revision/{revision}?blobs=true"
    try:
        info = json.loads(hub.request(url))
        return commit_of(info), files_to_fetch(info, params["patterns"])
    except HubError as exc:
        module.fail_json(msg=str(exc), status=exc.status, attempts=hub.retries, bytes=0, changed=False)
    except ValueError as exc:
        module.fail_json(msg=f"{params['repo']}: the Hub's answer is not JSON: {exc}", bytes=0, changed=False)
    raise AssertionError("unreachable")


def _present(dest, commit):
    marker = os.path.join(dest, MARKER)
    if not os.path.exists(marker):
        return False
    with open(marker, encoding="utf-8") as handle:
        return json.load(handle).get("commit") == commit


def _download(module, hub, commit, files, staging):
    """Fetch every file into staging; returns the bytes written."""
    params = module.params
    endpoint, repo = params["endpoint"].rstrip("/"), params["repo"]
    written_total = 0
    for item in files:
        target = os.path.join(staging, item["name"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as sink:
            written = hub.request(f"{endpoint}/{repo}/resolve/{commit}/{quote(item['name'])}", sink)
        if item["size"] is not None and written != item["size"]:
            listed = item["size"]
            raise HubError(f"{repo}@{commit[:12]}: {item['name']} has {written} bytes; the Hub listed {listed}")
        written_total += written
    with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
        json.dump({"repo": repo, "revision": params["revision"], "commit": commit}, handle)
    if params["owner"]:
        user = pwd.getpwnam(params["owner"])
        for root, dirs, names in os.walk(staging):
            for name in [*dirs, *names]:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(staging, user.pw_uid, user.pw_gid)
    os.chmod(staging, 0o700)
    return written_total


def _swap_in(staging, dest):
    """Replace dest by staging; the previous snapshot stays until the new one is in place."""
    previous = dest + ".previous"
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(dest):
        os.rename(dest, previous)
    os.rename(staging, dest)
    shutil.rmtree(previous, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec={
            "repo": {"type": "str", "required": True},
            "revision": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
            "endpoint": {"type": "str", "default": "https://huggingface.co"},
            "patterns": {"type": "list", "elements": "str"},
            "retries": {"type": "int", "default": 5},
            "backoff": {"type": "float", "default": 2},
            "timeout": {"type": "int", "default": 60},
            "owner": {"type": "str"},
            "min_free_bytes": {"type": "int", "default": 0},
            "token": {"type": "str", "default": "", "no_log": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    problem = check_request(params["repo"], params["revision"])
    if problem:
        module.fail_json(msg=problem, changed=False, bytes=0, attempts=0)
    hub = Hub(module)
    commit, files = _snapshot_info(module, hub)
    names = [item["name"] for item in files]
    dest = params["dest"].rstrip("/")
    if _present(dest, commit):
        module.exit_json(changed=False, commit=commit, files=names, bytes=0, attempts=hub.retries)
    parent = os.path.dirname(dest)
    stats = os.statvfs(parent if os.path.isdir(parent) else "/")
    free, needed = stats.f_bavail * stats.f_frsize, total_bytes(files) + params["min_free_bytes"]
    if free < needed:
        module.fail_json(
            msg=f"{params['repo']}@{commit[:12]}: {free / 1e9:.1f} GB free under {parent}; expected "
            f"{needed / 1e9:.1f} GB for the snapshot and the margin; fix: free disk or point vllm_models_dir at a "
            "larger volume",
            changed=False,
            bytes=0,
            attempts=hub.retries,
        )
    if module.check_mode:
        module.exit_json(changed=True, commit=commit, files=names, bytes=0, attempts=hub.retries)
    staging = dest + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        written = _download(module, hub, commit, files, staging)
        _swap_in(staging, dest)
    except HubError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        module.fail_json(msg=str(exc), status=exc.status, attempts=hub.retries, bytes=0, changed=False)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        module.fail_json(msg=f"{params['repo']}: cannot write {staging}: {exc}", changed=False, bytes=0)
    module.exit_json(changed=True, commit=commit, files=names, bytes=written, attempts=hub.retries)


if __name__ == "__main__":
    main()
