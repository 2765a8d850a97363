"""The inbound edge: a thin aiosmtpd handler and the reply strings."""
