#!/usr/bin/python
# Copyright: replimesh contributors
# MIT License (see the project's README)

DOCUMENTATION = r"""
---
module: replimesh_swarm
short_description: Publish a large file to the swarm, or wait until a node holds it
description:
  - Swarm mode sends large files piece by piece from every node that has them, each
    piece checked against its SHA-256; the swarm daemon on each node does the work.
  - With I(state=published), hashes the file (under the node's swarm root) into an offer,
    keeps it (this node then seeds the file) and offers it to every active peer over
    SSH, exactly as C(replimesh swarm publish) does. A peer that does not answer is
    reported and gets the offer at a later sync round; a peer that refuses the offer fails
    the task. In check mode the file is only checked, not hashed or published.
  - With I(state=present), waits until this node's swarm daemon reports the file
    complete (every piece verified, moved into place), polling its status every second;
    fails after I(timeout) seconds naming the state the file is in. In check mode the
    status is read once, without waiting.
  - Run it as the sync user (C(become_user), default C(replimesh)), whose key reaches
    the peers and who owns the swarm's files.
options:
  state:
    description: Publish the file from this node, or wait until this node holds it.
    type: str
    choices: [published, present]
    default: present
  path:
    description: The file, absolute or relative to the swarm root (C(swarm_root) in the
      node's config, default C(/srv/replimesh/swarm)); it lands at the same relative
      path on every node.
    type: str
    required: true
  infohash:
    description:
      - With I(state=present), the version of the file to wait for (the info-hash that
        I(state=published) returned). Default, the latest offer of that path this node
        holds, once one has reached it.
    type: str
  timeout:
    description: With I(state=present), seconds to wait for the file.
    type: int
    default: 3600
  config:
    description: Path of the node's config.
    type: path
    default: /etc/replimesh/config.json
author:
  - replimesh contributors
"""

EXAMPLES = r"""
- name: Publish a model from this node
  replimesh_swarm:
    state: published
    path: models/big.bin
  become: true
  become_user: replimesh
  register: offer

- name: Wait until this node holds that version, every piece verified
  replimesh_swarm:
    state: present
    path: models/big.bin
    infohash: "{{ offer.infohash }}"
    timeout: 7200
  become: true
  become_user: replimesh
"""

RETURN = r"""
path:
  description: The file's path relative to the swarm root.
  returned: always
  type: str
  sample: models/big.bin
infohash:
  description: The version of the file (its v2 info-hash); empty in check mode for
    I(state=published), and for I(state=present) when no offer reached the node.
  returned: always
  type: str
  sample: 1f0c6b8e0a7c2d4e9f3b5a6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e
size:
  description: The file's size in bytes.
  returned: always
  type: int
  sample: 8388608
peers:
  description: With I(state=published), each active peer's answer to the offer.
  returned: when state is published
  type: list
  elements: dict
  sample:
    - peer: node2
      address: 172.29.0.12
      result: offered
      message: ""
swarm_state:
  description: With I(state=present), the file's state on this node (complete, kept,
    downloading, checking, moving, error, waiting, or none when no offer reached it).
  returned: when state is present
  type: str
  sample: complete
progress:
  description: With I(state=present), the share of the file held, 0 to 1.
  returned: when state is present
  type: float
  sample: 1.0
waited:
  description: With I(state=present), seconds spent waiting.
  returned: when state is present
  type: float
  sample: 12.4
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.replimesh import config as node_config
from ansible.module_utils.replimesh import swarm_cli, swarm_mesh, swarm_offers
from ansible.module_utils.replimesh.errors import ReplimeshError

POLL_S = 1.0


def publish(module, cfg):
    path = module.params["path"]
    if module.check_mode:
        rel = swarm_offers.relative_path(cfg, path)
        module.exit_json(changed=True, path=rel, infohash="", peers=[],
                         size=os.path.getsize(os.path.join(cfg.swarm_root, rel)),
                         msg="check mode: not published")
    offer, sent = swarm_mesh.publish(cfg, path)
    result = {"path": offer.path, "infohash": offer.infohash, "size": offer.size,
              "peers": [vars(s) for s in sent]}
    for s in sent:
        if s.result == "unreachable":
            module.warn(f"peer {s.peer} is unreachable: it gets the offer at a later sync round")
    failed = [s for s in sent if s.result == "failed"]
    if failed:
        module.fail_json(msg="offer refused by " + ", ".join(
            f"{s.peer} ({s.message})" for s in failed), changed=True, **result)
    module.exit_json(changed=True, **result)


def relative(cfg, path):
    """path as a clean path under the swarm root; the file need not be there yet."""
    root = os.path.normpath(cfg.swarm_root)
    full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
    rel = os.path.relpath(full, root)
    swarm_offers.check_relative(rel, path)
    return rel


def look(cfg, rel, wanted):
    """(infohash, status entry or None, daemon running) of the file on this node now."""
    infohash = wanted
    if not infohash:
        offer = swarm_offers.current(swarm_offers.load_all(cfg)).get(rel)
        infohash = offer.infohash if offer else ""
    status = swarm_cli.load_status(cfg)
    entry = next((f for f in status["files"] if infohash and f["infohash"] == infohash), None)
    return infohash, entry, status["running"]


def held(entry):
    """The daemon calls this version complete, or it is kept in place unchanged since
    this node held it complete (load_status checks that)."""
    return entry is not None and entry["state"] in ("complete", "kept")


def describe(rel, infohash, entry, running):
    if not infohash:
        text = f"no offer of {rel} has reached this node"
    elif entry is None:
        text = f"{rel} ({infohash[:12]}) is not in the swarm status"
    else:
        text = f"{rel} is {entry['state']} at {entry.get('progress', 0.0) * 100:.1f}%"
        if entry.get("error"):
            text += f" ({entry['error']})"
    return text + ("" if running else "; the swarm daemon is NOT running")


def present(module, cfg):
    rel = relative(cfg, module.params["path"])
    wanted, timeout = module.params["infohash"] or "", module.params["timeout"]
    began = time.monotonic()
    while True:
        infohash, entry, running = look(cfg, rel, wanted)
        done = held(entry)
        if done or module.check_mode or time.monotonic() - began >= timeout:
            break
        time.sleep(POLL_S)
    result = {"path": rel, "infohash": infohash,
              "size": entry["size"] if entry else 0,
              "swarm_state": entry["state"] if entry else "none",
              "progress": entry.get("progress", 0.0) if entry else 0.0,
              "waited": round(time.monotonic() - began, 1)}
    if done:
        module.exit_json(changed=False, **result)
    what = describe(rel, infohash, entry, running)
    if module.check_mode:
        module.warn(f"not complete yet: {what}")
        module.exit_json(changed=False, msg=f"check mode: {what}", **result)
    module.fail_json(msg=f"not complete after {timeout} s: {what}", **result)


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["published", "present"],
                      "default": "present"},
            "path": {"type": "str", "required": True},
            "infohash": {"type": "str"},
            "timeout": {"type": "int", "default": 3600},
            "config": {"type": "path", "default": node_config.DEFAULT_PATH},
        },
        supports_check_mode=True,
    )
    try:
        cfg = node_config.load(module.params["config"])
        if module.params["state"] == "published":
            publish(module, cfg)
        else:
            present(module, cfg)
    except ReplimeshError as error:
        module.fail_json(msg=str(error))


if __name__ == "__main__":
    main()
