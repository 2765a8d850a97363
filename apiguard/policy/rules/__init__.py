"""Charter rules, one module per article or concern; each module exports RULES."""
