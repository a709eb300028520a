"""The daemon's storage: the LMDB event log and projection store behind the ports in ``actors.ports``.

Only this package imports ``lmdb``; record layouts live in ``protocol.logrecords``.
"""
