#!/usr/bin/python
"""Ansible module: download a Hugging Face model snapshot (thin adapter over module_utils/llm_hf.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: hf_snapshot
short_description: Download a pinned Hugging Face model snapshot into a directory, atomically
description:
  - Asks the Hub for the files of O(repo) at the commit O(revision) with their metadata (C(?blobs=true)), downloads
    the files a model directory needs into a staging directory beside O(dest), checks each one against the size and
    checksum the Hub listed (the sha256 of an LFS file, the git blob id of any other), and only then moves the
    directory into place; a failed or refused download leaves the previous snapshot where it was and no staging
    directory behind.
  - Nothing is asked of the Hub when O(dest) already holds that commit complete (its marker and the files' sizes),
    so a rerun works while the Hub is unreachable.
  - The token is the O(token) argument only (declared C(no_log), so Ansible hides it; module arguments travel
    inside the module's payload, never on a command line or in the process's environment). It is sent only to the
    origin (scheme, host, port) of O(endpoint); a redirect to another origin (the Hub sends LFS files to a CDN) is
    followed without it, and a redirect from https to http is refused.
  - HTTP 429 and 5xx answers, network errors and bodies cut short are retried with backoff; 401, 403 and 404 fail
    at once with a message that tells them apart; a checksum mismatch fails at once.
  - A write that fails (the disk filling up during the download) is not retried either; the staging directory is
    removed first, then one line names O(dest), the file, "no space left" and the fix.
options:
  repo:
    description: Repository id, C(owner/name).
    type: str
    required: true
  revision:
    description: The commit, 40 lowercase hex digits (a branch or tag can move, so it is refused).
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
from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llm_hf import (
    HubError,
    WriteError,
    backoff,
    check_file,
    check_request,
    classify,
    commit_of,
    files_to_fetch,
    follow_redirect,
    hasher,
    redact,
    total_bytes,
    write_failure,
)
from ansible.module_utils.urls import open_url

MARKER = ".hf_snapshot.json"
MAX_REDIRECTS = 10


class Hub:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.token = module.params["token"]
        self.endpoint = module.params["endpoint"].rstrip("/")
        self.retries = 0

    def _open(self, url):
        """The response to GET url; redirects are followed here, the token only where follow_redirect allows."""
        authorized = bool(self.token)
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": "llm-toolkit-hf-snapshot/1", "Accept-Encoding": "identity"}
            if authorized:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                return open_url(url, headers=headers, timeout=self.params["timeout"], follow_redirects="none")
            except HTTPError as exc:
                location = exc.headers.get("Location") if exc.headers else None
                if not 300 <= exc.code < 400 or not location:
                    raise
                exc.close()
                url, authorized = follow_redirect(url, location, self.endpoint, authorized)
        raise HubError(f"more than {MAX_REDIRECTS} redirects from the Hub")

    def request(self, url, sink=None, item=None):
        """GET url with retries; returns the body, or streams it into sink (a file) and checks it against item."""
        params = self.params
        where = f"{params['repo']}@{params['revision']}"
        for attempt in range(params["retries"] + 1):
            retry_after = None
            try:
                with self._open(url) as response:
                    if sink is None:
                        return response.read()
                    sink.seek(0)
                    sink.truncate()
                    digest, written = hasher(item), 0
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        try:
                            sink.write(block)
                            sink.flush()  # a full disk shows here, at the file that filled it
                        except OSError as exc:  # not the network's fault: no retry
                            raise WriteError(item["name"], written, exc) from exc
                        digest.update(block)
                        written += len(block)
                    length = response.headers.get("Content-Length")
                    if written < item["size"] or (length and length.isdigit() and written < int(length)):
                        raise HubError(
                            f"{where}: {item['name']}: the transfer was cut after {written} of {item['size']} bytes",
                            retryable=True,
                        )
                    check_file(item, written, digest.hexdigest())
                    return written
            except HTTPError as exc:
                body = exc.read().decode("utf-8", "replace") if hasattr(exc, "read") else ""
                error = classify(exc.code, params["repo"], params["revision"], body, self.token)
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
            except HubError as exc:
                error = exc if str(exc).startswith(where) else HubError(f"{where}: {exc}", exc.status, exc.retryable)
            except (URLError, OSError, HTTPException) as exc:
                # HTTPException: IncompleteRead when a chunked body ends early, BadStatusLine, ...
                cause = f"{type(exc).__name__}: {exc}" if isinstance(exc, HTTPException) else str(exc)
                error = HubError(f"{where}: network error: {cause}", retryable=True)
            if not error.retryable or attempt == params["retries"]:
                if error.retryable:
                    raise HubError(f"{error} after {attempt + 1} attempts; fix: retry later, or set vllm_hf_token")
                raise error
            self.retries += 1
            time.sleep(backoff(attempt, params["backoff"], retry_after=retry_after))
        raise AssertionError("unreachable")


def _fail(module, hub, msg, **extra):
    """fail_json without the token, whatever an answer echoed."""
    module.fail_json(msg=redact(msg, hub.token), attempts=hub.retries, bytes=0, changed=False, **extra)


def _snapshot_info(module, hub):
    """(commit, files) of the revision, or fail with the Hub's answer told apart."""
    params = module.params
    revision = quote(params["revision"], safe="")
    url = f"{hub.endpoint}/api/models/{params['repo']}/revision/{revision}?blobs=true"
    try:
        info = json.loads(hub.request(url))
        commit = commit_of(info)
        if commit != params["revision"]:
            raise HubError(f"the Hub answered commit {commit} for revision {params['revision']}")
        return commit, files_to_fetch(info, params["patterns"])
    except HubError as exc:
        where = f"{params['repo']}@{params['revision']}"
        _fail(module, hub, str(exc) if str(exc).startswith(where) else f"{where}: {exc}", status=exc.status)
    except ValueError as exc:
        _fail(module, hub, f"{params['repo']}: the Hub's answer is not JSON: {exc}")
    raise AssertionError("unreachable")


def _present(dest, params):
    """Whether dest already holds the pinned commit, complete: read from its marker and the files' sizes only."""
    try:
        with open(os.path.join(dest, MARKER), encoding="utf-8") as handle:
            marker = json.load(handle)
        files = marker["files"]
        return (
            marker.get("commit") == params["revision"]
            and marker.get("patterns") == params["patterns"]
            and all(os.path.getsize(os.path.join(dest, item["name"])) == item["size"] for item in files)
        ), [item["name"] for item in files]
    except (OSError, ValueError, KeyError, TypeError):
        return False, []


def _download(module, hub, commit, files, staging):
    """Fetch every file into staging, each checked against the size and checksum the Hub listed; the bytes."""
    params = module.params
    written_total = 0
    for item in files:
        target = os.path.join(staging, item["name"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as sink:
            written_total += hub.request(
                f"{hub.endpoint}/{params['repo']}/resolve/{commit}/{quote(item['name'])}", sink, item
            )
    marker = {
        "repo": params["repo"],
        "revision": params["revision"],
        "commit": commit,
        "patterns": params["patterns"],
        "files": files,
    }
    try:
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as handle:
            json.dump(marker, handle)
    except OSError as exc:
        raise WriteError(MARKER, 0, exc) from exc
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
    dest = params["dest"].rstrip("/")
    present, names = _present(dest, params)
    if present:  # no Hub access: a rerun works while the Hub is down or rate-limits
        module.exit_json(changed=False, commit=params["revision"], files=names, bytes=0, attempts=0)
    hub = Hub(module)
    commit, files = _snapshot_info(module, hub)
    names = [item["name"] for item in files]
    parent = os.path.dirname(dest)
    stats = os.statvfs(parent if os.path.isdir(parent) else "/")
    free, needed = stats.f_bavail * stats.f_frsize, total_bytes(files) + params["min_free_bytes"]
    if free < needed:
        _fail(
            module,
            hub,
            f"{params['repo']}@{commit[:12]}: {free / 1e9:.1f} GB free under {parent}; expected "
            f"{needed / 1e9:.1f} GB for the snapshot and the margin; fix: free disk or point vllm_models_dir at a "
            "larger volume",
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
        _fail(module, hub, str(exc), status=exc.status)
    except (WriteError, OSError) as exc:  # a full disk during the download, ...: said once the partial is gone
        shutil.rmtree(staging, ignore_errors=True)
        stats = os.statvfs(parent if os.path.isdir(parent) else "/")
        _fail(
            module, hub, write_failure(f"{params['repo']}@{commit}", dest, exc, stats.f_bavail * stats.f_frsize, needed)
        )
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _fail(module, hub, f"{params['repo']}@{commit[:12]}: download failed: {type(exc).__name__}: {exc}")
    module.exit_json(changed=True, commit=commit, files=names, bytes=written, attempts=hub.retries)


if __name__ == "__main__":
    main()
