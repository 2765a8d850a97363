"""The pure charter: rules, findings and the decision. No I/O here."""
