#!/usr/bin/python
# Copyright: replimesh contributors
# MIT License (see the project's README)

DOCUMENTATION = r"""
---
module: replimesh_sign_peers
short_description: Build and sign the mesh's peer list from the inventory, on the controller
description:
  - Builds the peer list that every node applies (M(replimesh_peers)) and passes on to
    its peers in every sync session, and signs each entry with the operator's key using
    C(ssh-keygen -Y sign). Run it on the controller (C(delegate_to) localhost, C(run_once)).
  - The nodes of group C(mesh) are active, those of C(mesh_removed) removed (tombstones,
    kept for ever so a stale copy cannot bring them back). Nodes reached in this run give
    their keys and addresses; a node of C(mesh) not reached keeps the entry the lists
    already hold.
  - An entry is signed again, with a version above every version seen for that node,
    only when what it says changes; an unchanged inventory gives an unchanged list.
  - Only entries signed by the current operator key are trusted from the lists read.
  - The result is also saved as C(peers.json) in O(controller_dir), the controller's copy
    that C(fab mesh.propagate) pushes and the next run reads, with the operator's public
    key as C(operator_signers) (allowed_signers format) beside it.
  - The operator key is made when missing if O(create_key) is set.
options:
  nodes:
    description:
      - The nodes of group C(mesh) reached in this run, by name, each with C(addresses)
        (list), C(ssh_key) and C(host_keys) (list, "type base64"), and C(peer_list) (the
        text of its current peer list, or empty).
    type: dict
    required: true
  mesh:
    description: Names of every node of group C(mesh), reached or not.
    type: list
    elements: str
    required: true
  removed:
    description: Names of the nodes of group C(mesh_removed).
    type: list
    elements: str
    default: []
  operator_key:
    description: Path of the operator's private key (its public key next to it, C(.pub)).
    type: path
    required: true
  create_key:
    description: Make the operator key pair when it does not exist.
    type: bool
    default: false
  controller_dir:
    description: Folder on the controller holding the signed list (C(peers.json)).
    type: path
    required: true
author:
  - replimesh contributors
"""

EXAMPLES = r"""
- name: Build and sign the peer list
  replimesh_sign_peers:
    nodes: "{{ nodes }}"
    mesh: "{{ groups['mesh'] }}"
    removed: "{{ groups['mesh_removed'] | default([]) }}"
    operator_key: "{{ inventory_dir }}/.replimesh/operator_ed25519"
    create_key: true
    controller_dir: "{{ inventory_dir }}/.replimesh"
  delegate_to: localhost
  run_once: true
  register: signed
"""

RETURN = r"""
peers:
  description: The signed peer list (an object with C(format) and C(peers)).
  returned: always
  type: dict
operator_signers:
  description: The allowed_signers line of the operator key, for the nodes.
  returned: always
  type: str
signed:
  description: Nodes whose entry was signed in this run.
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.replimesh import controller, signature
from ansible.module_utils.replimesh import peers as peer_list
from ansible.module_utils.replimesh.errors import ConfigError, ReplimeshError


def main():
    module = AnsibleModule(
        argument_spec={
            "nodes": {"type": "dict", "required": True},
            "mesh": {"type": "list", "elements": "str", "required": True},
            "removed": {"type": "list", "elements": "str", "default": []},
            "operator_key": {"type": "path", "required": True, "no_log": False},
            "create_key": {"type": "bool", "default": False},
            "controller_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    saved = os.path.join(p["controller_dir"], "peers.json")
    signers = None
    try:
        public = controller.ensure_operator_key(p["operator_key"], p["create_key"])
        members, known, warnings = _read_nodes(p["nodes"])
        known += _read_saved(saved, warnings)
        signers = controller.signers_file_for(public)
        built = controller.build(p["mesh"], p["removed"], members, known,
                                 p["operator_key"], signers)
    except ReplimeshError as error:
        module.fail_json(msg=str(error))
    finally:
        if signers:
            os.unlink(signers)
    text = peer_list.dumps(built.peers)
    # The operator's public key goes beside the list, for the nodes that only get the
    # saved copy (removed nodes, fab mesh.propagate's readers).
    signers_text = signature.allowed_signers(public)
    outputs = {saved: text, os.path.join(p["controller_dir"], "operator_signers"): signers_text}
    changed = any(_text(path) != content for path, content in outputs.items())
    if changed and not module.check_mode:
        os.makedirs(p["controller_dir"], mode=0o700, exist_ok=True)
        for path, content in outputs.items():
            with open(path + ".tmp", "w", encoding="utf-8") as out:
                out.write(content)
            os.replace(path + ".tmp", path)
    for warning in warnings + built.warnings:
        module.warn(warning)
    module.exit_json(changed=changed, peers=peer_list.to_json(built.peers),
                     operator_signers=signers_text, signed=built.signed)


def _read_nodes(nodes):
    members, known, warnings = [], [], []
    for name, facts in sorted(nodes.items()):
        try:
            members.append(controller.Member(
                name, tuple(facts["addresses"]), " ".join(facts["ssh_key"].split()[:2]),
                tuple(" ".join(k.split()[:2]) for k in facts["host_keys"])))
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"{name}: nodes needs addresses, ssh_key and host_keys") from None
        if facts.get("peer_list"):
            try:
                known.append(peer_list.parse(json.loads(facts["peer_list"]), f"{name}'s list"))
            except (ValueError, ConfigError) as error:
                warnings.append(f"{name}'s peer list was not read ({error}); it is kept on the "
                                "node until replaced")
    return members, known, warnings


def _read_saved(path, warnings):
    text = _text(path)
    if not text:
        return []
    try:
        return [peer_list.parse(json.loads(text), path)]
    except (ValueError, ConfigError) as error:
        warnings.append(f"the controller's copy {path} was not read: {error}")
        return []


def _text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
