"""replimesh's operator tasks (`fab -l` lists them)."""

from invoke import Collection

from . import mesh, swarm
from .lab import tasks as lab

ns = Collection()
ns.add_collection(Collection.from_module(lab, name="lab"))
ns.add_collection(Collection.from_module(mesh, name="mesh"))
ns.add_collection(Collection.from_module(swarm, name="swarm"))
