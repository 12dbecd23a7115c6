#!/usr/bin/python
# Copyright: replimesh contributors
# MIT License (see the project's README)

DOCUMENTATION = r"""
---
module: replimesh_peers
short_description: Add, update and remove entries of a node's signed peer list
description:
  - Merges operator-signed peer-list entries into the node's peer list, the same way a
    node merges the list a peer sends it during a sync session, then regenerates the
    sync user's C(known_hosts) from the active entries (sshd learns the keys that may
    log in from the keys user's copy of the list, not from the sync user).
  - An entry adds a node, replaces an older entry of the same node (higher version), or
    removes a node (an entry with state C(removed), kept as a tombstone). Entries older
    than the node's own are left out, so running it again changes nothing.
  - Every entry must be signed by the operator key the node trusts
    (C(operator_signers) in the node's config); the task fails naming any entry that is
    not, and takes none of the entries in that case.
  - A peer list on the node that does not parse is kept as it is and reported; a node
    with no list yet (first deploy) starts from an empty one.
  - Run it as the sync user (C(become_user), default C(replimesh)), who owns the files.
  - Supports check mode and diff mode.
options:
  peers:
    description:
      - The signed entries, as built by M(replimesh_sign_peers) (its C(peers) result),
        either the whole list object or the list of entries.
    type: raw
    required: true
  config:
    description: Path of the node's config.
    type: path
    default: /etc/replimesh/config.json
author:
  - replimesh contributors
"""

EXAMPLES = r"""
- name: Apply the signed peer list
  replimesh_peers:
    peers: "{{ signed.peers }}"
  become: true
  become_user: replimesh
"""

RETURN = r"""
added:
  description: Nodes that were not in the node's list.
  returned: always
  type: list
  elements: str
  sample: [node5]
updated:
  description: Nodes whose entry was replaced by a newer one (including removals).
  returned: always
  type: list
  elements: str
  sample: [node3]
removed:
  description: Nodes that are removed in the new list and were active before.
  returned: always
  type: list
  elements: str
  sample: [node3]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.replimesh import config as node_config
from ansible.module_utils.replimesh import membership
from ansible.module_utils.replimesh import peers as peer_list
from ansible.module_utils.replimesh.errors import ReplimeshError


def main():
    module = AnsibleModule(
        argument_spec={"peers": {"type": "raw", "required": True},
                       "config": {"type": "path", "default": node_config.DEFAULT_PATH}},
        supports_check_mode=True,
    )
    given = module.params["peers"]
    given = given if isinstance(given, dict) else {"format": peer_list.FORMAT, "peers": given}
    try:
        cfg = node_config.load(module.params["config"])
        incoming = peer_list.parse(given, "peers")
        trial = membership.accept(cfg, incoming, "the deploy", write=False, missing_ok=True)
        if trial.ignored:
            module.fail_json(msg=f"entries of {', '.join(trial.ignored)} are not signed by the "
                                 f"operator key in {cfg.operator_signers}: was the key "
                                 "rotated without running site.yml? Nothing was changed")
        files_stale = _files_stale(cfg, trial.after)
        if not module.check_mode:
            membership.accept(cfg, incoming, "the deploy", missing_ok=True)
    except ReplimeshError as error:
        module.fail_json(msg=str(error))
    before, after = trial.before, trial.after
    result = {
        "added": [n for n in trial.changed if n not in before],
        "updated": [n for n in trial.changed if n in before],
        "removed": [n for n in trial.changed if n in before and before[n].active
                    and not after[n].active],
        "changed": bool(trial.changed) or files_stale,
    }
    if module._diff:
        result["diff"] = {"before_header": cfg.peers_file, "after_header": cfg.peers_file,
                          "before": _lines(before), "after": _lines(after)}
    module.exit_json(**result)


def _files_stale(cfg, peers):
    """Whether known_hosts differs from what the list makes of it."""
    try:
        with open(cfg.known_hosts, encoding="utf-8") as handle:
            return handle.read() != membership.known_hosts(cfg, peers)
    except OSError:
        return True


def _lines(peers):
    return "".join(peer_list.describe(peers[name]) + "\n" for name in sorted(peers))


if __name__ == "__main__":
    main()
