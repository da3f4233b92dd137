"""Plumbing shared by both adapters: Hub files, atomic I/O, ZeRO-3 gathering, tensor fingerprints."""
