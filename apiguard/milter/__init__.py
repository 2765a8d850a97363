"""apiguard inside Postfix: the same pipeline behind the milter protocol.

The protocol is implemented here, on asyncio, rather than through pymilter
(libmilter's C threads calling Python callbacks): the milter then runs on the
same event loop as the pipeline, the store's group commit and the analysis
workers, with no thread per Postfix connection and no C library to build.
Postfix uses a small, stable part of milter protocol 6 (negotiation, the SMTP
stages, macros, the final answers and header changes), which `protocol`
covers and the unit and real-Postfix tests exercise.
"""
