"""The audit trail: what every token did."""
