"""Who may ask what: identities, the network PKI, permits, signed tasks, the audit trail."""
