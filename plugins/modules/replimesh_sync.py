#!/usr/bin/python
# Copyright: replimesh contributors
# MIT License (see the project's README)

DOCUMENTATION = r"""
---
module: replimesh_sync
short_description: Run one replimesh sync round on a node
description:
  - Runs one round of the node's replimesh agent (Unison over SSH against every active peer
    of its peer list, in the node's rotated order) and records the results in its state
    file, exactly as C(replimesh sync) does from cron.
  - Run it as the sync user (C(become_user), default C(replimesh)), because the round uses that
    user's SSH key, pinned host keys and Unison archives.
  - Each session starts with a peer-list exchange, so membership changes spread with rounds.
  - An unreachable peer is reported, not an error; a peer whose session failed fails the task.
  - In check mode nothing is synced; each peer is probed for reachability only, since
    Unison cannot preview a two-way sync.
options:
  config:
    description: Path of the node's config.
    type: path
    default: /etc/replimesh/config.json
author:
  - replimesh contributors
"""

EXAMPLES = r"""
- name: Sync this node with all its peers
  replimesh_sync:
  become: true
  become_user: replimesh

- name: See which peers answer, without syncing
  replimesh_sync:
  check_mode: true
  become: true
  become_user: replimesh
"""

RETURN = r"""
peers:
  description: One result per active peer, in the order they were synced.
  returned: always
  type: list
  elements: dict
  sample:
    - peer: node2
      address: 172.29.0.12
      result: ok
      duration: 0.41
      files: 3
      bytes: 5120
      conflicts: 0
      deleted: 0
      learned: [node5]
      message: ""
unreachable_peers:
  description: Names of the peers that did not answer within the connect timeout.
  returned: always
  type: list
  elements: str
  sample: [node3]
failed_peers:
  description: Names of the peers whose session failed.
  returned: always
  type: list
  elements: str
  sample: []
files:
  description: Files transferred in the round, both ways, all peers and roots.
  returned: always
  type: int
  sample: 3
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.replimesh import config as node_config
from ansible.module_utils.replimesh import membership
from ansible.module_utils.replimesh import peers as peer_list
from ansible.module_utils.replimesh.errors import ReplimeshError
from ansible.module_utils.replimesh.round import (
    FAILED,
    OK,
    UNREACHABLE,
    PeerResult,
    first_reachable,
    run_round,
)


def probe(cfg):
    """Check mode: which peers answer, nothing synced, nothing written."""
    results = []
    for peer in peer_list.rotated(membership.load(cfg), cfg.node):
        address = first_reachable(peer.addresses, cfg.ssh_port, cfg.connect_timeout)
        results.append(PeerResult(peer.name, address or peer.addresses[0],
                                  OK if address else UNREACHABLE, 0.0,
                                  message="check mode: not synced"))
    return results


def main():
    module = AnsibleModule(
        argument_spec={"config": {"type": "path", "default": node_config.DEFAULT_PATH}},
        supports_check_mode=True,
    )
    try:
        cfg = node_config.load(module.params["config"])
        results = probe(cfg) if module.check_mode else run_round(cfg)
    except ReplimeshError as error:
        module.fail_json(msg=str(error))
    peers = [r.as_dict() for r in results]
    outcome = {
        "peers": peers,
        "unreachable_peers": [r.peer for r in results if r.result == UNREACHABLE],
        "failed_peers": [r.peer for r in results if r.result == FAILED],
        "files": sum(r.files for r in results),
    }
    for name in outcome["unreachable_peers"]:
        module.warn(f"peer {name} is unreachable: skipped this round")
    if outcome["failed_peers"]:
        module.fail_json(msg="sync failed with " + ", ".join(
            f"{r.peer} ({r.message})" for r in results if r.result == FAILED), **outcome)
    module.exit_json(changed=outcome["files"] > 0, **outcome)


if __name__ == "__main__":
    main()
