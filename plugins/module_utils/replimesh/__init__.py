"""replimesh's core: config, peer list, Unison sessions, sync rounds, the forced command.

Standard library only, Python >= 3.9, relative imports: the same folder is shipped by
Ansible inside every module run, copied onto each node (/opt/replimesh/lib) for the
agent, and imported by the Fabric tasks on the controller.
"""
