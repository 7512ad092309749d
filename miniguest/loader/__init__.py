"""The domain builder's side: parse a PV kernel ELF and lay out a domain's start-of-day memory."""
