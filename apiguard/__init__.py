"""apiguard: a local SMTP proxy that makes outgoing secure mail obey the APICRYPT charter."""

__version__ = "0.1.0"
